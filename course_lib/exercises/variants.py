"""Exercises of notebook 02 (attention variants: MHA, MQA, GQA and the KV cache); the library's twins are in
course_lib.attention, course_lib.kv_cache and course_lib.decode."""
import math

import torch
import torch.nn.functional as F

from . import Wrong, exercise, expect_close, expect_number, expect_shape
from .. import decode as D
from .. import kv_cache as KV

NB = "02_attention_variants"
_g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=_g(seed), dtype=torch.float64).to(dtype)


# ------------------------------------------------------------------ 02.repeat_kv
def _repeat_kv_ref(k, n_rep):
    return k.repeat_interleave(n_rep, dim=1)


repeat_ex = exercise(
    "02.repeat_kv", notebook=NB, stars=1, minutes=5, signature="repeat_kv(k, n_rep) -> tensor (B, H_kv·n_rep, T, d)",
    task="The simple way to run GQA with an MHA kernel: copy each of the H_kv key (or value) heads of k "
         "(B, H_kv, T, d) n_rep times, so that query head h finds its K/V head h // n_rep at index h.",
    hint="Query heads h = j·G … j·G + G − 1 share K/V head j, so the copies of head j must sit next to each other: "
         "k.repeat_interleave(n_rep, dim=1) (or k[:, :, None].expand(B, H_kv, n_rep, T, d).reshape(B, H_kv·n_rep, T, d)). "
         "k.repeat(1, n_rep, 1, 1) tiles the heads 0, 1, …, 0, 1, … — the wrong order.",
    reference=_repeat_kv_ref)


def _repeat_mistakes(k, n_rep):
    return [(k.repeat(1, n_rep, 1, 1), "the copies are tiled (heads 0, 1, …, 0, 1, …), so query head h reads K/V head "
                                       "h % H_kv instead of h // n_rep: keep the copies of each head together, "
                                       "repeat_interleave(n_rep, dim=1), not repeat"),
            (k.repeat_interleave(n_rep, dim=2), "you repeated the positions (dim 2), not the heads: repeat along the "
                                                "head dimension, dim=1")]


@repeat_ex.check
def _repeat_values(fn):
    k = _randn(2, 2, 5, 3, seed=30)
    out = fn(k, 4)
    if isinstance(out, torch.Tensor) and tuple(out.shape) == (2, 2, 20, 3):
        raise Wrong("repeat_kv of a (2, 2, 5, 3) k with n_rep = 4 has shape (2, 2, 20, 3): you repeated the positions "
                    "(dim 2), not the heads — repeat along the head dimension, dim=1, to get (2, 8, 5, 3)")
    expect_close(out, _repeat_kv_ref(k, 4), "repeat_kv of a (2, 2, 5, 3) k with n_rep = 4",
                 mistakes=_repeat_mistakes(k, 4))


@repeat_ex.check
def _repeat_edge(fn):
    k = _randn(1, 3, 4, 8, seed=31, dtype=torch.float64)
    expect_close(fn(k, 1), k, "repeat_kv(k, 1): MHA, nothing to repeat")
    out = expect_shape(fn(k, 2), (1, 6, 4, 8), "repeat_kv of a (1, 3, 4, 8) float64 k with n_rep = 2")
    expect_close(out, _repeat_kv_ref(k, 2), "repeat_kv of a (1, 3, 4, 8) float64 k with n_rep = 2",
                 mistakes=_repeat_mistakes(k, 2))
    one = _randn(2, 1, 6, 4, seed=32)  # MQA: one K/V head for every query head
    expect_close(fn(one, 8), _repeat_kv_ref(one, 8), "repeat_kv of one K/V head (MQA) for 8 query heads")


# ------------------------------------------------------------------ 02.grouped_attention
def _grouped_ref(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def _sdpa_causal(q, k, v, scale=None):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


def _grouped_mistakes(q, k, v):
    H, Hkv = q.shape[1], k.shape[1]
    G = H // Hkv
    tiled = _sdpa_causal(q, k.repeat(1, G, 1, 1), v.repeat(1, G, 1, 1))
    kr, vr = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
    out = [(F.scaled_dot_product_attention(q, kr, vr), "no causal mask: query i must not see the keys j > i — fill "
                                                       "the scores above the diagonal with -inf before the softmax"),
           (_sdpa_causal(q, kr, vr, scale=1.0), "scores are not scaled: divide q·kᵀ by √d_head"),
           (_sdpa_causal(q, kr, vr, scale=1.0 / q.shape[-1]), "scores are divided by d_head: divide by √d_head")]
    if G > 1 and Hkv > 1:
        out.insert(0, (tiled, "query head h reads K/V head h % H_kv: the heads of a group are consecutive, "
                              "h = j·G … j·G + G − 1 share K/V head j — view q as (B, H_kv, G, T, d), not (B, G, H_kv, T, d), "
                              "and repeat_interleave rather than repeat"))
    return out


grouped_ex = exercise(
    "02.grouped_attention", notebook=NB, stars=2, minutes=10,
    signature="grouped_attention(q, k, v) -> tensor (B, H, T, d_head)",
    task="Causal attention for q (B, H, T, d_head) against k, v (B, H_kv, T, d_head), H = H_kv·G: query head h "
         "reads K/V head h // G. Without copying K and V: group the query heads and let K/V broadcast.",
    hint="G = H // H_kv; q.view(B, H_kv, G, T, d) puts the G heads of K/V head j together; k.unsqueeze(2) is "
         "(B, H_kv, 1, T, d) and broadcasts over G. Scores q @ kᵀ / √d (B, H_kv, G, T, T), -inf above the diagonal "
         "(torch.ones(T, T, dtype=torch.bool).tril() is True where j ≤ i), softmax over the keys, @ v, view back to (B, H, T, d).",
    reference=_grouped_ref)


@grouped_ex.check
def _grouped_gqa(fn):
    q, k, v = _randn(2, 8, 6, 4, seed=33), _randn(2, 2, 6, 4, seed=34), _randn(2, 2, 6, 4, seed=35)
    expect_close(fn(q, k, v), _grouped_ref(q, k, v), "grouped_attention with 8 query heads on 2 K/V heads",
                 mistakes=_grouped_mistakes(q, k, v), atol=1e-5)


@grouped_ex.check
def _grouped_mha_mqa(fn):
    for Hkv in (4, 1):  # MHA (G = 1) and MQA (one K/V head)
        q = _randn(1, 4, 5, 8, seed=36, dtype=torch.float64)
        k, v = _randn(1, Hkv, 5, 8, seed=37, dtype=torch.float64), _randn(1, Hkv, 5, 8, seed=38, dtype=torch.float64)
        name = "MHA (4 query heads, 4 K/V heads)" if Hkv == 4 else "MQA (4 query heads, 1 K/V head)"
        expect_close(fn(q, k, v), _grouped_ref(q, k, v), f"grouped_attention for {name}, float64",
                     mistakes=_grouped_mistakes(q, k, v), atol=1e-10)


# ------------------------------------------------------------------ 02.kv_cache_bytes
def _kv_bytes_ref(n_layers, n_kv_heads, d_head, n_tokens, batch, bytes_per_value):
    """course_lib.kv_cache.kv_cache_bytes counts elements of a dtype; 'int8' is 1 byte per element, so it counts
    the elements, and bytes_per_value scales them."""
    elements = KV.kv_cache_bytes(n_layers, n_kv_heads, d_head, n_tokens, batch, dtype="int8")
    return int(elements * bytes_per_value)


kv_ex = exercise(
    "02.kv_cache_bytes", notebook=NB, stars=1, minutes=5,
    signature="kv_cache_bytes(n_layers, n_kv_heads, d_head, n_tokens, batch, bytes_per_value) -> int",
    task="The bytes a KV cache holds after n_tokens tokens, for batch sequences: every layer keeps a key and a value "
         "tensor of shape (batch, n_kv_heads, n_tokens, d_head), bytes_per_value bytes each (4 for float32, 2 for "
         "fp16/bf16). Return an int.",
    hint="Both K and V are cached: 2 · n_layers · n_kv_heads · d_head · n_tokens · batch · bytes_per_value. The number "
         "of query heads does not appear — only the K/V heads are stored. int(...) if bytes_per_value may be 0.5.",
    reference=_kv_bytes_ref)

_KV_CASES = [  # (n_layers, n_kv_heads, d_head, n_tokens, batch, bytes_per_value, n_heads, what)
    (2, 2, 8, 31, 3, 4, 8, "the notebook's GQA model: 2 layers, 2 K/V heads, 31 tokens, batch 3, float32"),
    (80, 8, 128, 4096, 1, 2, 64, "Llama-2-70B at 4,096 tokens, fp16"),
    (32, 8, 128, 1, 32, 2, 32, "Llama-3-8B, one token, batch 32, fp16"),
    (12, 12, 64, 1024, 2, 4, 12, "GPT-2 small at 1,024 tokens, batch 2, float32"),
]


@kv_ex.check
def _kv_values(fn):
    for L, Hkv, dh, T, B, b, H, what in _KV_CASES:
        want = _kv_bytes_ref(L, Hkv, dh, T, B, b)
        got = fn(L, Hkv, dh, T, B, b)
        mistakes = [(want // 2, f"{what}: half the bytes — K and V are both cached: multiply by 2"),
                    (want * 2, f"{what}: twice the bytes — the factor 2 counts K and V once each; did you count it twice?"),
                    (want // b, f"{what}: you counted elements, not bytes: multiply by bytes_per_value"),
                    (want // B, f"{what}: the cache is per sequence: multiply by batch")]
        if H != Hkv:
            mistakes.insert(0, (want // Hkv * H, f"{what}: you used the {H} query heads; only the {Hkv} K/V heads are "
                                                 "cached — use n_kv_heads"))
        expect_number(got, want, f"kv_cache_bytes for {what}", rel=1e-12, mistakes=mistakes)


@kv_ex.check
def _kv_int(fn):
    got = fn(32, 8, 128, 4096, 1, 2)
    if not isinstance(got, int) or isinstance(got, bool):
        raise Wrong(f"return a Python int (a count of bytes), got {type(got).__name__}: wrap the product in int(...)")
    expect_number(fn(4, 2, 64, 0, 1, 2), 0, "kv_cache_bytes with 0 tokens (an empty cache)")
    expect_number(fn(32, 8, 128, 4096, 1, 0.5), _kv_bytes_ref(32, 8, 128, 4096, 1, 0.5),
                  "kv_cache_bytes with bytes_per_value = 0.5 (int4)")


# ------------------------------------------------------------------ 02.predict_gqa_cache_saving
def _saving_truth():
    c = KV.PUBLISHED_CONFIGS["Llama-3-8B"]
    gqa = KV.kv_cache_bytes(c["n_layers"], c["n_kv_heads"], c["d_head"], 4096)
    mha = KV.kv_cache_bytes(c["n_layers"], c["n_heads"], c["d_head"], 4096)
    return mha / gqa


predict_saving = exercise(
    "02.predict_gqa_cache_saving", notebook=NB, stars=1, minutes=3, kind="predict",
    signature="predict_gqa_cache_saving() -> float",
    task="Before running section 3: Llama-3-8B has 32 layers, 32 query heads and 8 K/V heads of 128 (\"GQA-8\"). "
         "Return how many times smaller its KV cache is than that of the same model with MHA; the check computes it "
         "from the published configuration.",
    hint="Write the cache formula for both: everything is the same except the number of K/V heads — n_heads for MHA, "
         "n_kv_heads for GQA. The ratio is n_heads / n_kv_heads.",
    reference=lambda: 4.0)


@predict_saving.check
def _predict_saving(fn):
    truth = _saving_truth()
    expect_number(fn(), truth, "your predicted saving", rel=0.01, mistakes=[
        (8.0, f"the saving is {truth:g}x: \"GQA-8\" names the 8 K/V heads, not the saving — the saving is "
              "n_heads / n_kv_heads = 32 / 8"),
        (32.0, f"the saving is {truth:g}x: 32 is what MQA (one K/V head) would save; GQA-8 keeps 8 K/V heads"),
        (0.25, f"inverted: the GQA cache is 1/{truth:g} of MHA's, so it is {truth:g} times smaller"),
        (2.0, f"the saving is {truth:g}x: K and V are both cached in both models, so the factor 2 cancels")],
        otherwise="Only the number of K/V heads differs between the two caches.")


# ------------------------------------------------------------------ 02.step_cost
_DTYPE_OF_BYTES = {8: torch.float64, 4: torch.float32, 2: torch.float16, 1: "int8"}


def _step_cost_ref(d_model, n_heads, n_kv_heads, n_new, n_past=0, b=4):
    c = D.attention_step_cost(d_model, n_heads, n_kv_heads, n_new, n_past, dtype=_DTYPE_OF_BYTES[b])
    return c["flops"], c["bytes"]


step_ex = exercise(
    "02.step_cost", notebook=NB, stars=3, minutes=15,
    signature="step_cost(d_model, n_heads, n_kv_heads, n_new, n_past=0, b=4) -> (flops, bytes)",
    task="FLOPs and bytes moved by one bias-free attention layer (fused W_qkv of (n_heads + 2·n_kv_heads)·d_head rows, "
         "W_o of d_model × d_model) for n_new tokens after n_past cached ones, batch 1, b bytes per number: matmuls "
         "only at 2 FLOPs per multiply-add, causal, every tensor (weights, cached K/V read, new K/V written, x in and "
         "y out) moved once.",
    hint="d_head = d_model // n_heads; params = d_model·(n_heads + 2·n_kv_heads)·d_head + d_model². FLOPs: "
         "2·n_new·params for the projections plus 4·n_heads·d_head per (query, key) pair (q·k and weights·v); "
         "query i of the new ones sees n_past + i + 1 keys, so pairs = n_new·n_past + n_new·(n_new + 1)/2. Bytes: "
         "(params + 2·n_kv_heads·d_head·(n_past + n_new) + 2·n_new·d_model)·b.",
    reference=_step_cost_ref)


def _step_mistakes(d_model, H, Hkv, n_new, n_past, b):
    dh = d_model // H
    params = d_model * (H + 2 * Hkv) * dh + d_model * d_model
    pairs = n_new * n_past + n_new * (n_new + 1) // 2
    flops = 2 * n_new * params + 4 * H * dh * pairs
    moved = (params + 2 * Hkv * dh * (n_past + n_new) + 2 * n_new * d_model) * b
    params_mha = d_model * 3 * H * dh + d_model * d_model
    return flops, moved, [
        ((2 * n_new * params + 4 * H * dh * n_new * (n_past + n_new), moved),
         "FLOPs count every (query, key) pair of a full n_new × (n_past + n_new) block: under the causal mask new "
         "token i sees only n_past + i + 1 keys, so pairs = n_new·n_past + n_new·(n_new + 1)/2"),
        ((n_new * params + 2 * H * dh * pairs, moved),
         "half the FLOPs: a multiply-add is 2 FLOPs (2·n_new·params, and 4·n_heads·d_head per pair: 2 for q·k, 2 for "
         "weights·v)"),
        ((2 * n_new * params + 2 * H * dh * pairs, moved),
         "the attention FLOPs count only q·k: weights·v costs as much again, 4·n_heads·d_head per pair in all"),
        ((flops, (params + 2 * Hkv * dh * n_new + 2 * n_new * d_model) * b),
         "bytes miss the cached keys and values: a step reads all 2·n_kv_heads·d_head·n_past of them"),
        ((2 * n_new * params_mha + 4 * H * dh * pairs,
          (params_mha + 2 * H * dh * (n_past + n_new) + 2 * n_new * d_model) * b),
         "you used n_heads K/V heads: W_qkv has (n_heads + 2·n_kv_heads)·d_head rows and the cache n_kv_heads heads"),
        ((flops, (params + 2 * Hkv * dh * (n_past + n_new)) * b),
         "bytes miss the activations: x comes in and y goes out, 2·n_new·d_model numbers"),
        ((flops, moved // b), "bytes are counted in numbers: multiply by b bytes per number")]


@step_ex.check
def _step_cases(fn):
    for args, what in (((512, 8, 2, 1, 1024, 4), "a decode step: d_model 512, 8 query heads, 2 K/V heads, 1 token "
                                                 "after 1,024, float32"),
                       ((512, 8, 8, 256, 0, 4), "a prefill of 256 tokens (MHA, float32)"),
                       ((256, 4, 1, 3, 17, 2), "3 new tokens after 17 (MQA, 2 bytes per number)")):
        flops, moved, mistakes = _step_mistakes(*args)
        got = fn(*args)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Wrong(f"return a pair (flops, bytes), got {type(got).__name__}")
        for (wf, wb), why in mistakes:
            if math.isclose(got[0], wf, rel_tol=1e-9) and math.isclose(got[1], wb, rel_tol=1e-9) \
                    and (wf, wb) != (flops, moved):
                raise Wrong(f"{what}: {why}")
        expect_number(got[0], flops, f"FLOPs of {what}", rel=1e-9)
        expect_number(got[1], moved, f"bytes of {what}", rel=1e-9)
