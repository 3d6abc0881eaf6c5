"""Prefill vs decode (notebook 02 §5): the cost model, the decode step with a preallocated cache, CPU caches."""
import pytest
import torch
import torch.nn.functional as F

from course_lib.attention import MultiHeadAttention
from course_lib.decode import attention_step_cost, cpu_caches, decode_step, last_level_cache_bytes
from course_lib.kv_cache import KVCache, kv_cache_bytes
from course_lib.positions import apply_rope


def _decode_all(layer, x, rope_theta=None, extra=3):
    """Feed x (B, T, d) token by token through decode_step with a fresh cache of T + extra positions."""
    B, T, d = x.shape
    k_cache = torch.zeros(B, layer.n_kv_heads, T + extra, layer.d_head)
    v_cache = torch.zeros_like(k_cache)
    ys = [decode_step(x[:, t], layer.qkv.weight, layer.out.weight, k_cache, v_cache, t, rope_theta=rope_theta)
          for t in range(T)]
    return torch.stack(ys, 1), k_cache, v_cache


@pytest.mark.parametrize("n_heads,n_kv", [(4, 4), (4, 2), (4, 1), (8, 2)])
@pytest.mark.parametrize("rope_theta", [None, 10000.0])
def test_decode_step_equals_the_course_layer(n_heads, n_kv, rope_theta):
    torch.manual_seed(n_heads + n_kv)
    layer = MultiHeadAttention(32, n_heads, n_kv, rope_theta=rope_theta).eval()
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        full = layer(x, is_causal=True)
        ours, k_cache, v_cache = _decode_all(layer, x, rope_theta)
        torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-5)
        # the same keys and values as the course's KVCache holds after the same tokens
        cache = KVCache(1)
        layer(x, is_causal=True, cache=cache)
    torch.testing.assert_close(k_cache[:, :, :9], cache.keys[0])
    torch.testing.assert_close(v_cache[:, :, :9], cache.values[0])
    assert k_cache[:, :, 9:].abs().sum() == 0  # nothing written past the last position


def test_the_cache_holds_rotated_keys_and_matches_sdpa():
    """With RoPE the cached key of position t is the raw key rotated by t; attention over that cache is
    causal SDPA on rotated q and k (repeat the K/V heads for the reference)."""
    torch.manual_seed(3)
    H, Hkv, d, T = 4, 2, 32, 7
    dh = d // H
    layer = MultiHeadAttention(d, H, Hkv).eval()  # no RoPE inside: the reference rotates by hand
    x = torch.randn(2, T, d)
    with torch.no_grad():
        ours, k_cache, _ = _decode_all(layer, x, rope_theta=10000.0)
        q, k, v = layer.qkv(x).split([H * dh, Hkv * dh, Hkv * dh], -1)
        q = q.view(2, T, H, dh).transpose(1, 2)
        k, v = (t.view(2, T, Hkv, dh).transpose(1, 2) for t in (k, v))
        q_rot, k_rot = apply_rope(q, k.repeat_interleave(H // Hkv, 1), torch.arange(T))
        ref = F.scaled_dot_product_attention(q_rot, k_rot, v.repeat_interleave(H // Hkv, 1), is_causal=True)
        ref = layer.out(ref.transpose(1, 2).reshape(2, T, d))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k_cache[:, :, :T], k_rot[:, ::H // Hkv])  # rotated, as cached
    assert not torch.allclose(k_cache[:, :, 1:T], k[:, :, 1:])  # position 0 is not rotated; the others are


def test_attention_step_cost_by_hand():
    # d_model 8, 2 heads of 4, 1 K/V head: params = 8 * (2 + 2) * 4 + 64 = 192
    c = attention_step_cost(8, 2, 1, n_new=1, n_past=5, dtype=torch.float32)
    assert c["flops"] == 2 * 192 + 4 * 2 * 4 * 6  # 6 keys: 5 cached + the new one
    assert (c["weights"], c["cache_read"], c["kv_write"], c["activations"]) == (768, 2 * 4 * 5 * 4, 32, 64)
    assert c["bytes"] == 768 + 160 + 32 + 64 and c["intensity"] == c["flops"] / c["bytes"]
    p = attention_step_cost(8, 2, 1, n_new=3, dtype="bfloat16")  # prefill of 3: 1 + 2 + 3 = 6 pairs
    assert p["flops"] == 2 * 3 * 192 + 4 * 2 * 4 * 6 and p["weights"] == 384 and p["cache_read"] == 0
    # the cache read of a decode step is exactly the KV cache of that many tokens, for one layer
    c = attention_step_cost(512, 8, 2, n_new=1, n_past=1000, batch=3, dtype=torch.float16)
    assert c["cache_read"] == kv_cache_bytes(1, 2, 64, 1000, batch=3, dtype=torch.float16)


def test_decode_is_memory_bound_and_prefill_is_not():
    """Decode does ~1 FLOP per byte whatever the length; a prefill's intensity grows with the prompt;
    with G query heads per K/V head the attention part does G times more FLOPs per cached byte."""
    dec = {hkv: attention_step_cost(4096, 32, hkv, 1, n_past=8191, dtype=torch.float16) for hkv in (32, 8, 1)}
    pre = attention_step_cost(4096, 32, 32, 8192, dtype=torch.float16)
    assert dec[32]["intensity"] < 2 < 1000 < pre["intensity"]
    assert dec[32]["intensity"] < dec[8]["intensity"] < dec[1]["intensity"]
    attn = {h: (c["flops"] - 2 * c["weights"] / 2) / c["cache_read"] for h, c in dec.items()}  # fp16: params = w/2
    assert attn[8] / attn[32] == pytest.approx(4, rel=1e-3) and attn[1] / attn[32] == pytest.approx(32, rel=1e-3)


def test_cpu_caches_from_a_fake_sysfs(tmp_path):
    for i, (level, size, kind) in enumerate([(1, "32K", "Data"), (1, "32K", "Instruction"), (2, "512K", "Unified"),
                                             (3, "32768K", "Unified")]):
        (tmp_path / f"index{i}").mkdir()
        for name, value in (("level", level), ("size", size), ("type", kind)):
            (tmp_path / f"index{i}" / name).write_text(f"{value}\n")
    (tmp_path / "index9").mkdir()  # unreadable entries are skipped
    caches = cpu_caches(tmp_path)
    assert [(c["level"], c["type"], c["size"]) for c in caches] == [
        (1, "Data", 32768), (1, "Instruction", 32768), (2, "Unified", 524288), (3, "Unified", 32 * 2**20)]
    assert last_level_cache_bytes(caches) == 32 * 2**20
    assert cpu_caches(tmp_path / "missing") == [] and last_level_cache_bytes([]) is None
    assert last_level_cache_bytes([{"level": 1, "type": "Instruction", "size": 1}]) is None
    assert isinstance(cpu_caches(), list)  # the real machine: a list, possibly empty


@pytest.mark.parametrize("call,match", [
    (lambda: attention_step_cost(10, 3, 1, 1), "divisible by n_heads"),
    (lambda: attention_step_cost(12, 4, 3, 1), "must divide n_heads"),
    (lambda: attention_step_cost(8, 2, 1, 0), "n_new must be a positive integer"),
    (lambda: attention_step_cost(8, 2, 1, 1, n_past=-1), "n_past must be a non-negative"),
    (lambda: attention_step_cost(8, 2, 1, 1, batch=0), "batch must be a positive"),
    (lambda: attention_step_cost(8, 2, 1, 1, dtype="float17"), "unknown dtype"),
    (lambda: decode_step(torch.zeros(1, 1, 8), torch.zeros(24, 8), torch.zeros(8, 8), torch.zeros(1, 1, 4, 4),
                         torch.zeros(1, 1, 4, 4), 0), "x\\[:, 0\\]"),
    (lambda: decode_step(torch.zeros(1, 8), torch.zeros(24, 8), torch.zeros(8, 8), torch.zeros(1, 1, 4, 4),
                         torch.zeros(1, 1, 4, 4), 0), "pass layer.qkv.weight"),
    (lambda: decode_step(torch.zeros(1, 8), torch.zeros(16, 8), torch.zeros(8, 8), torch.zeros(1, 1, 4, 4),
                         torch.zeros(1, 1, 4, 4), 4), "allocate a longer cache"),
    (lambda: decode_step(torch.zeros(1, 8), torch.zeros(16, 8), torch.zeros(8, 8), torch.zeros(2, 1, 4, 4),
                         torch.zeros(2, 1, 4, 4), 0), "k_cache and v_cache must both be"),
    (lambda: decode_step(torch.zeros(1, 8, dtype=torch.long), torch.zeros(16, 8), torch.zeros(8, 8),
                         torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), 0), "x must be a floating"),
])
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
