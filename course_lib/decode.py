"""Prefill vs decode: arithmetic intensity from the shapes, a decode step that reads the cache once,
and the CPU caches the measurement is set against.

A **prefill** pushes the whole prompt through a layer at once: every weight read from memory is
used for all P tokens, so its FLOPs per byte grow with P. A **decode step** pushes one token: every
weight and every cached key and value is read to do two FLOPs per element read (a multiply-add),
so it is limited by memory bandwidth, not arithmetic (Shazeer 2019). Fewer K/V heads (GQA, MQA;
Ainslie et al. 2023) mean fewer bytes to read per token: each K/V head serves G = n_heads / n_kv_heads
query heads, which is G times more FLOPs per cached byte.

    attention_step_cost   FLOPs and bytes of one attention layer for n_new tokens after n_past cached
    decode_step           one token through one layer, with a preallocated cache (RoPE'd keys cached)
    cpu_caches            the CPU's cache levels and sizes, from Linux's sysfs
"""
import math
import numbers
from pathlib import Path

import torch

from .kv_cache import bytes_per_element
from .positions import apply_rope

SYSFS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_heads(d_model, n_heads, n_kv_heads):
    for name, value in (("d_model", d_model), ("n_heads", n_heads), ("n_kv_heads", n_kv_heads)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads} (d_head = d_model // n_heads); "
                         f"choose n_heads among {[h for h in range(1, d_model + 1) if d_model % h == 0]}")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={n_heads} (1 = MQA, n_heads = MHA); "
                         f"choose one of {[h for h in range(1, n_heads + 1) if n_heads % h == 0]}")


def attention_step_cost(d_model, n_heads, n_kv_heads, n_new, n_past=0, batch=1, dtype=torch.float32):
    """FLOPs and bytes moved by one attention layer processing n_new tokens after n_past cached ones.

    The layer is the course's bias-free `MultiHeadAttention`: a fused W_qkv of (n_heads + 2 n_kv_heads)
    d_head rows and d_model columns, and W_o (d_model x d_model). Prefill: n_new = P, n_past = 0.
    Decode: n_new = 1, n_past = tokens already cached. Counted (2 FLOPs per multiply-add, matmuls only;
    the softmax and scaling, O(n_heads * keys), are left out):
      flops  = 2 * batch * n_new * params                       (the projections)
             + 4 * batch * n_heads * d_head * pairs             (q.k and weights.v), causal:
               pairs = n_new * n_past + n_new (n_new + 1) / 2   (query i sees n_past + i + 1 keys)
      bytes, each tensor moved once between memory and the processor (the floor a fused kernel reaches):
        weights      params * b                                 (read once, shared by the batch)
        cache_read   2 * batch * n_kv_heads * d_head * n_past * b
        kv_write     2 * batch * n_kv_heads * d_head * n_new * b
        activations  2 * batch * n_new * d_model * b            (x in, y out)
    Returns a dict of those, plus bytes (their sum) and intensity = flops / bytes (FLOPs per byte).
    Taught inline in notebook 02 §5 (prefill and decode); the notebook asserts they agree."""
    _check_heads(d_model, n_heads, n_kv_heads)
    if not _is_int(n_new) or n_new < 1:
        raise ValueError(f"n_new must be a positive integer (1 for a decode step, P for a prefill), got {n_new!r}")
    for name, value in (("n_past", n_past), ("batch", batch)):
        if not _is_int(value) or value < 0 or (name == "batch" and value < 1):
            raise ValueError(f"{name} must be a {'positive' if name == 'batch' else 'non-negative'} integer, "
                             f"got {value!r}")
    b = bytes_per_element(dtype)
    d_head = d_model // n_heads
    params = d_model * (n_heads + 2 * n_kv_heads) * d_head + d_model * d_model
    pairs = n_new * n_past + n_new * (n_new + 1) // 2
    cost = dict(
        flops=2 * batch * n_new * params + 4 * batch * n_heads * d_head * pairs,
        weights=params * b,
        cache_read=2 * batch * n_kv_heads * d_head * n_past * b,
        kv_write=2 * batch * n_kv_heads * d_head * n_new * b,
        activations=2 * batch * n_new * d_model * b,
    )
    cost["bytes"] = cost["weights"] + cost["cache_read"] + cost["kv_write"] + cost["activations"]
    cost["intensity"] = cost["flops"] / cost["bytes"]
    return cost


def decode_step(x, w_qkv, w_o, k_cache, v_cache, pos, rope_theta=None):
    """One token through one attention layer, with a preallocated cache that it reads once.

    x (B, d_model) is the newest token's input; w_qkv ((H + 2 Hkv) d_head, d_model) and w_o
    (d_model, d_model) are the weights of a bias-free `course_lib.attention.MultiHeadAttention`
    (`.qkv.weight`, `.out.weight`); k_cache, v_cache (B, Hkv, T_max, d_head) hold positions 0..pos-1.
    The new key and value are written at `pos`, in place, and the query attends to positions 0..pos.
    With rope_theta (RoPE's base, e.g. 10000.0) q and k are rotated by the angle of position `pos`
    *before* the key is written: the cache holds rotated keys, so no cached key is ever rotated again.
    The G = H / Hkv query heads of a group are the G rows of one matrix product with their K/V head:
    each cached K/V head is read once, never repeated. Returns (B, d_model).
    Taught inline in notebook 02 §5 (prefill and decode); the notebook asserts they agree."""
    for name, t in (("x", x), ("w_qkv", w_qkv), ("w_o", w_o), ("k_cache", k_cache), ("v_cache", v_cache)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating torch.Tensor, got "
                             f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must be (batch, d_model), the newest token only, got {tuple(x.shape)}; "
                         "for a (batch, 1, d_model) tensor pass x[:, 0]")
    B, d = x.shape
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.shape[0] != B:
        raise ValueError(f"k_cache and v_cache must both be (batch={B}, n_kv_heads, T_max, d_head), "
                         f"got {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    Hkv, T_max, dh = k_cache.shape[1:]
    if d % dh or w_o.shape != (d, d) or w_qkv.shape != ((d // dh + 2 * Hkv) * dh, d):
        raise ValueError(f"the weights do not fit d_model={d}, {Hkv} K/V heads of d_head={dh}: w_qkv must be "
                         f"({(d // dh + 2 * Hkv) * dh}, {d}) and w_o ({d}, {d}), got {tuple(w_qkv.shape)} and "
                         f"{tuple(w_o.shape)}; pass layer.qkv.weight and layer.out.weight")
    H = d // dh
    if H % Hkv:
        raise ValueError(f"the cache's {Hkv} K/V heads must divide the {H} query heads")
    if not _is_int(pos) or not 0 <= pos < T_max:
        raise ValueError(f"pos must be an integer in 0..{T_max - 1} (the cache holds T_max={T_max} positions), "
                         f"got {pos!r}; allocate a longer cache")
    G = H // Hkv
    q, k, v = (x @ w_qkv.T).split([H * dh, Hkv * dh, Hkv * dh], dim=-1)
    q = q.view(B, H, 1, dh)  # one new position
    k, v = k.view(B, Hkv, 1, dh), v.view(B, Hkv, 1, dh)
    if rope_theta is not None:  # rotate the new q and k once, by the angle of their own position
        q, k = apply_rope(q, k, torch.tensor([pos], device=x.device), rope_theta)
    k_cache[:, :, pos:pos + 1] = k  # the cache stores the rotated key
    v_cache[:, :, pos:pos + 1] = v
    K, V = k_cache[:, :, :pos + 1], v_cache[:, :, :pos + 1]  # (B, Hkv, pos + 1, dh): views, no copy
    q = q.view(B, Hkv, G, dh)  # the G query heads of K/V head j (h = j*G .. j*G+G-1) as G rows
    scores = (q @ K.transpose(-1, -2)) / math.sqrt(dh)  # (B, Hkv, G, pos + 1)
    y = scores.softmax(-1) @ V  # (B, Hkv, G, dh)
    return y.reshape(B, d) @ w_o.T  # heads concatenated in order h = j*G + g, then W_o


def _size_bytes(text):
    """'32K' -> 32768, '1M' -> 1048576, '512' -> 512 (sysfs' cache sizes)."""
    text = text.strip().upper()
    unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
    digits = text[:-1] if unit != 1 else text
    return int(digits) * unit


def cpu_caches(folder=SYSFS_CACHE):
    """The CPU's caches as [{'level': 1, 'type': 'Data', 'size': 32768}, ...], sorted by level, from
    Linux's /sys/devices/system/cpu/cpu0/cache/index*/{level,size,type}. [] where that is not readable
    (macOS, Windows, containers that hide it): callers must fall back to an assumed size."""
    caches = []
    try:
        folders = sorted(Path(folder).glob("index*"))
    except OSError:
        return []
    for index in folders:
        try:
            caches.append(dict(level=int((index / "level").read_text()), type=(index / "type").read_text().strip(),
                               size=_size_bytes((index / "size").read_text())))
        except (OSError, ValueError):
            continue
    return sorted(caches, key=lambda c: (c["level"], c["type"]))


def last_level_cache_bytes(caches):
    """The size in bytes of the highest-level data or unified cache in `cpu_caches()`'s list, or None."""
    usable = [c for c in caches if c.get("type") in ("Data", "Unified")]
    if not usable:
        return None
    top = max(c["level"] for c in usable)
    return max(c["size"] for c in usable if c["level"] == top)
