"""Notebook 02's exercises: their checks accept other correct code and name the mistakes."""
import math

import torch
import torch.nn.functional as F

from exercise_harness import make_tests


# ---- 02.repeat_kv
def repeat_kv_expand(k, n_rep):
    B, H, T, d = k.shape
    return k[:, :, None].expand(B, H, n_rep, T, d).reshape(B, H * n_rep, T, d)


def repeat_kv_loop(k, n_rep):
    return torch.stack([k[:, h] for h in range(k.shape[1]) for _ in range(n_rep)], dim=1)


def repeat_kv_tiled(k, n_rep):
    return k.repeat(1, n_rep, 1, 1)


def repeat_kv_positions(k, n_rep):
    return k.repeat_interleave(n_rep, dim=2)


# ---- 02.grouped_attention
def grouped_by_repeating(q, k, v):
    G = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1), is_causal=True)


def grouped_loop(q, k, v):
    B, H, T, d = q.shape
    G = H // k.shape[1]
    out = torch.empty_like(q)
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    for h in range(H):
        s = q[:, h] @ k[:, h // G].transpose(-1, -2) / math.sqrt(d)
        out[:, h] = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1) @ v[:, h // G]
    return out


def grouped_tiled_order(q, k, v):
    G = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, k.repeat(1, G, 1, 1), v.repeat(1, G, 1, 1), is_causal=True)


def grouped_no_mask(q, k, v):
    B, H, T, d = q.shape
    Hkv = k.shape[1]
    qg = q.view(B, Hkv, H // Hkv, T, d)
    s = qg @ k.unsqueeze(2).transpose(-2, -1) / math.sqrt(d)
    return (s.softmax(-1) @ v.unsqueeze(2)).view(B, H, T, d)


def grouped_no_scale(q, k, v):
    B, H, T, d = q.shape
    Hkv = k.shape[1]
    qg = q.view(B, Hkv, H // Hkv, T, d)
    s = (qg @ k.unsqueeze(2).transpose(-2, -1)).masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)
    return (s.softmax(-1) @ v.unsqueeze(2)).view(B, H, T, d)


# ---- 02.kv_cache_bytes
def kv_bytes_per_token(n_layers, n_kv_heads, d_head, n_tokens, batch, bytes_per_value):
    per_token = 2 * n_layers * n_kv_heads * d_head * bytes_per_value   # K and V of every layer
    return int(per_token * n_tokens * batch)


def kv_bytes_tensors(n_layers, n_kv_heads, d_head, n_tokens, batch, bytes_per_value):
    elements = math.prod([n_layers, 2, batch, n_kv_heads, n_tokens, d_head])
    return int(elements * bytes_per_value)


def kv_bytes_no_two(n_layers, n_kv_heads, d_head, n_tokens, batch, bytes_per_value):
    return int(n_layers * n_kv_heads * d_head * n_tokens * batch * bytes_per_value)


def kv_bytes_query_heads(n_layers, n_kv_heads, d_head, n_tokens, batch, bytes_per_value):
    n_heads = {8: 64 if n_layers == 80 else 32 if n_layers == 32 else 8, 2: 8}.get(n_kv_heads, n_kv_heads)
    return int(2 * n_layers * n_heads * d_head * n_tokens * batch * bytes_per_value)


def kv_bytes_float(n_layers, n_kv_heads, d_head, n_tokens, batch, bytes_per_value):
    return 2.0 * n_layers * n_kv_heads * d_head * n_tokens * batch * bytes_per_value


def kv_bytes_elements(n_layers, n_kv_heads, d_head, n_tokens, batch, bytes_per_value):
    return 2 * n_layers * n_kv_heads * d_head * n_tokens * batch


# ---- 02.predict_gqa_cache_saving
def saving_from_formula():
    return (2 * 32 * 32 * 128) / (2 * 32 * 8 * 128)


# ---- 02.step_cost
def step_cost_itemised(d_model, n_heads, n_kv_heads, n_new, n_past=0, b=4):
    dh = d_model // n_heads
    w_qkv, w_o = (n_heads + 2 * n_kv_heads) * dh * d_model, d_model * d_model
    keys_seen = sum(n_past + i + 1 for i in range(n_new))           # causal: new token i sees n_past + i + 1 keys
    flops = 2 * n_new * (w_qkv + w_o) + 2 * 2 * n_heads * dh * keys_seen
    numbers = w_qkv + w_o + 2 * n_kv_heads * dh * n_past + 2 * n_kv_heads * dh * n_new + n_new * d_model * 2
    return flops, numbers * b


def step_cost_full_block(d_model, n_heads, n_kv_heads, n_new, n_past=0, b=4):
    dh = d_model // n_heads
    params = d_model * (n_heads + 2 * n_kv_heads) * dh + d_model * d_model
    flops = 2 * n_new * params + 4 * n_heads * dh * n_new * (n_past + n_new)
    return flops, (params + 2 * n_kv_heads * dh * (n_past + n_new) + 2 * n_new * d_model) * b


def step_cost_no_cache_read(d_model, n_heads, n_kv_heads, n_new, n_past=0, b=4):
    dh = d_model // n_heads
    params = d_model * (n_heads + 2 * n_kv_heads) * dh + d_model * d_model
    pairs = n_new * n_past + n_new * (n_new + 1) // 2
    return 2 * n_new * params + 4 * n_heads * dh * pairs, (params + 2 * n_kv_heads * dh * n_new + 2 * n_new * d_model) * b


def step_cost_one_flop(d_model, n_heads, n_kv_heads, n_new, n_past=0, b=4):
    dh = d_model // n_heads
    params = d_model * (n_heads + 2 * n_kv_heads) * dh + d_model * d_model
    pairs = n_new * n_past + n_new * (n_new + 1) // 2
    return n_new * params + 2 * n_heads * dh * pairs, \
        (params + 2 * n_kv_heads * dh * (n_past + n_new) + 2 * n_new * d_model) * b


def step_cost_mha(d_model, n_heads, n_kv_heads, n_new, n_past=0, b=4):
    return step_cost_itemised(d_model, n_heads, n_heads, n_new, n_past, b)


CORRECT = {
    "02.repeat_kv": [repeat_kv_expand, repeat_kv_loop],
    "02.grouped_attention": [grouped_by_repeating, grouped_loop],
    "02.kv_cache_bytes": [kv_bytes_per_token, kv_bytes_tensors],
    "02.predict_gqa_cache_saving": [saving_from_formula, lambda: 4],
    "02.step_cost": [step_cost_itemised],
}
WRONG = {
    "02.repeat_kv": [(repeat_kv_tiled, "repeat_interleave"), (repeat_kv_positions, "dim=1")],
    "02.grouped_attention": [(grouped_tiled_order, "h % H_kv"), (grouped_no_mask, "no causal mask"),
                             (grouped_no_scale, "not scaled")],
    "02.kv_cache_bytes": [(kv_bytes_no_two, "multiply by 2"), (kv_bytes_query_heads, "use n_kv_heads"),
                          (kv_bytes_float, "python int"), (kv_bytes_elements, "multiply by bytes_per_value")],
    "02.predict_gqa_cache_saving": [(lambda: 8, "names the 8 K/V heads"), (lambda: 32, "MQA"),
                                    (lambda: 0.25, "inverted")],
    "02.step_cost": [(step_cost_full_block, "causal mask"), (step_cost_no_cache_read, "cached keys and values"),
                     (step_cost_one_flop, "2 FLOPs"), (step_cost_mha, "n_heads K/V heads")],
}

test_accepts_a_correct_implementation, test_rejects_a_wrong_implementation_with_its_hint = make_tests(CORRECT, WRONG)
