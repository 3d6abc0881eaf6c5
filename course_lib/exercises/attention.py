"""Exercises of notebook 01 (attention from scratch); the library's twins are in course_lib.attention and
course_lib.positions."""
import math

import torch
import torch.nn.functional as F

from . import Wrong, exercise, expect_close, expect_number, expect_shape
from .. import attention as A
from .. import positions as P

NB = "01_attention_from_scratch"
_g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=_g(seed), dtype=torch.float64).to(dtype)


# ------------------------------------------------------------------ 01.softmax
def _softmax_ref(x):
    return torch.softmax(x, dim=-1)


softmax_ex = exercise(
    "01.softmax", notebook=NB, stars=1, minutes=5, signature="softmax(x) -> tensor, same shape as x",
    task="The softmax over the last axis, written with `torch.exp` (no `torch.softmax`), that stays finite for "
         "scores in the thousands.",
    hint="softmax(x)_i = exp(x_i) / Σ_j exp(x_j) along dim=-1 (keepdim=True so it broadcasts). exp(1000) overflows to inf: "
         "subtract the row's max first — softmax(x) = softmax(x − c) for any constant c in the row.",
    reference=_softmax_ref)


@softmax_ex.check
def _softmax_values(fn):
    x = _randn(3, 7, seed=1)
    expect_close(fn(x), _softmax_ref(x), "softmax of a (3, 7) tensor",
                 mistakes=[(torch.softmax(x, dim=0), "your weights sum to 1 down each column: take the softmax over "
                                                     "the last axis (dim=-1), one distribution per row"),
                           (torch.exp(x), "the exponentials are not normalised: divide by their sum along dim=-1")])


@softmax_ex.check
def _softmax_any_shape(fn):
    x = _randn(2, 3, 4, 5, seed=2, dtype=torch.float64)
    out = expect_shape(fn(x), x.shape, "softmax of a (2, 3, 4, 5) float64 tensor")
    expect_close(out, _softmax_ref(x), "softmax of a (2, 3, 4, 5) float64 tensor",
                 otherwise="Work along dim=-1 whatever the number of leading dimensions.")


@softmax_ex.check
def _softmax_large(fn):
    x = torch.tensor([[1000.0, 999.0, 998.0], [-1000.0, -1001.0, -1002.0]])
    out = fn(x)
    if not torch.isfinite(torch.as_tensor(out)).all():
        raise Wrong("scores of ±1000 give inf or nan: exp overflows (or every exp underflows to 0). "
                    "Subtract each row's max before exp — the result does not change.")
    expect_close(out, _softmax_ref(x), "softmax of scores near ±1000")


# ------------------------------------------------------------------ 01.predict_unscaled_variance
def _unscaled_variance(d_k=64, n=20000):
    q, k = _randn(n, d_k, seed=3, dtype=torch.float64), _randn(n, d_k, seed=4, dtype=torch.float64)
    return (q * k).sum(-1).var().item()


predict_var = exercise(
    "01.predict_unscaled_variance", notebook=NB, stars=1, minutes=3, kind="predict",
    signature="predict_unscaled_variance() -> float",
    task="Before running section 2: q and k have d_k = 64 independent N(0, 1) entries. Return your prediction of "
         "the variance of the unscaled score q·k; the check measures it on 20,000 pairs.",
    hint="q·k is a sum of d_k products q_i·k_i, each with mean 0 and variance E[q_i²]·E[k_i²] = 1, and "
         "independent: variances of independent terms add.",
    reference=lambda: 64.0)


@predict_var.check
def _predict_var(fn):
    guess = fn()
    measured = _unscaled_variance()
    if isinstance(guess, bool) or not isinstance(guess, (int, float)):
        raise Wrong(f"return a number (your predicted variance), got {type(guess).__name__}")
    if math.isclose(guess, 8.0, rel_tol=0.15):
        raise Wrong(f"measured {measured:.1f}: 8 = √64 is the standard deviation of q·k, not its variance")
    if math.isclose(guess, 1.0, rel_tol=0.15):
        raise Wrong(f"measured {measured:.1f}: 1 is the variance *after* dividing by √d_k")
    if not math.isclose(guess, measured, rel_tol=0.15):
        raise Wrong(f"measured {measured:.1f}, you predicted {guess}. Each of the d_k products has variance 1.")


# ------------------------------------------------------------------ 01.causal_mask
causal_ex = exercise(
    "01.causal_mask", notebook=NB, stars=1, minutes=5, signature="causal_mask(T) -> bool tensor (T, T)",
    task="True where query i may attend to key j: itself and every earlier position, never a later one.",
    hint="Row i is the query, column j the key; allowed means j ≤ i — the lower triangle, diagonal included "
         "(`torch.tril` of a (T, T) tensor of True, or compare `torch.arange(T)` with itself).",
    reference=A.causal_mask)


@causal_ex.check
def _causal_dtype(fn):
    m = expect_shape(fn(4), (4, 4), "causal_mask(4)")
    if m.dtype != torch.bool:
        raise Wrong(f"causal_mask(4) has dtype {m.dtype}: return a boolean tensor (True = may attend), "
                    "e.g. with dtype=torch.bool or a comparison")


@causal_ex.check
def _causal_values(fn):
    for T in (5, 9, 1):
        want = A.causal_mask(T)
        m = fn(T)
        expect_close(m, want, f"causal_mask({T})", mistakes=[
            (~want, f"causal_mask({T}) is inverted: it marks the blocked keys (True = masked is nn.MultiheadAttention's "
                    "convention); here True must mean *may attend* (j ≤ i), as in torch's SDPA"),
            (want.T, f"in causal_mask({T}) position 0 can see position {T - 1}: the mask lets a token attend to the "
                     "future (rows are queries, columns keys: keep the lower triangle)"),
            (want.tril(-1), f"causal_mask({T}) blocks the diagonal: a token may attend to itself (j = i)")])


# ------------------------------------------------------------------ 01.attention
def _attention_ref(q, k, v, mask=None):
    return A.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _attention_variants(q, k, v, mask=None):
    """Outputs of the plausible mistakes, with the hint each deserves."""
    d = q.shape[-1]
    s = q @ k.transpose(-2, -1)
    def soft(scores, dim=-1, m=mask):
        if m is not None:
            scores = scores.masked_fill(~m, float("-inf"))
        return torch.softmax(scores, dim=dim)
    out = [(soft(s / math.sqrt(d), dim=-2) @ v, "weights sum to 1 over the queries: take the softmax over the keys "
                                                "(dim=-1), one distribution per query row"),
           (soft(s) @ v, "scores are not scaled: divide q·kᵀ by √d (d = q.shape[-1])"),
           (soft(s / d) @ v, "scores are divided by d: divide by √d, the standard deviation of q·k"),
           (soft(s / math.sqrt(v.shape[-1])) @ v, "scaled by √d_v: the scale comes from the query/key width q.shape[-1]")]
    if mask is not None:
        out.append((soft(s / math.sqrt(d), m=~mask) @ v,
                    "the mask is inverted: True means *may attend* — fill the scores where the mask is False"))
        w = torch.softmax(s / math.sqrt(d), -1) * mask
        out.append((w @ v, "masked weights are zeroed after the softmax, so rows no longer sum to 1: "
                           "fill blocked scores with -inf *before* the softmax"))
    return out


attention_ex = exercise(
    "01.attention", notebook=NB, stars=2, minutes=10, signature="attention(q, k, v, mask=None) -> tensor",
    task="q (..., T_q, d), k (..., T_k, d), v (..., T_k, d_v): softmax(q·kᵀ/√d)·v, where an optional boolean mask "
         "broadcastable to (..., T_q, T_k) says True = may attend. Return the output (..., T_q, d_v).",
    hint="scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]); where the mask is False set the score to "
         "-inf (scores.masked_fill(~mask, float('-inf'))) *before* softmax(dim=-1); then weights @ v.",
    reference=_attention_ref)


def _attn_case(fn, q, k, v, mask, what):
    want = _attention_ref(q, k, v, mask)
    expect_close(fn(q, k, v) if mask is None else fn(q, k, v, mask), want, what,
                 mistakes=_attention_variants(q, k, v, mask), atol=1e-5)


@attention_ex.check
def _attn_plain(fn):
    q, k, v = _randn(6, 8, seed=5), _randn(6, 8, seed=6), _randn(6, 8, seed=7)
    _attn_case(fn, q, k, v, None, "attention(q, k, v) for (6, 8) inputs")


@attention_ex.check
def _attn_shapes(fn):
    q, k, v = _randn(2, 3, 4, 16, seed=8), _randn(2, 3, 7, 16, seed=9), _randn(2, 3, 7, 5, seed=10)
    out = fn(q, k, v)
    expect_shape(out, (2, 3, 4, 5), "attention with q (2, 3, 4, 16), k (2, 3, 7, 16), v (2, 3, 7, 5)")
    _attn_case(fn, q, k, v, None, "attention with batch and head dimensions, T_q = 4 ≠ T_k = 7, d = 16 ≠ d_v = 5")


@attention_ex.check
def _attn_sdpa(fn):
    q, k, v = (_randn(2, 4, 5, 8, seed=s, dtype=torch.float64) for s in (11, 12, 13))
    expect_close(fn(q, k, v), F.scaled_dot_product_attention(q, k, v), "attention vs torch's SDPA (float64)",
                 mistakes=_attention_variants(q, k, v))


@attention_ex.check
def _attn_causal(fn):
    q, k, v = (_randn(2, 5, 8, seed=s) for s in (14, 15, 16))
    _attn_case(fn, q, k, v, A.causal_mask(5), "attention with a causal (5, 5) mask")


@attention_ex.check
def _attn_padding(fn):
    q, k, v = (_randn(2, 2, 6, 8, seed=s) for s in (17, 18, 19))
    mask = A.padding_mask([4, 6], 6)  # (B, 1, 1, T_k): broadcasts over heads and queries
    _attn_case(fn, q, k, v, mask, "attention with a (2, 1, 1, 6) padding mask broadcast over heads and queries")


# ------------------------------------------------------------------ 01.split_heads
def _split_heads_ref(t, n_heads):
    B, T, C = t.shape
    return t.view(B, T, n_heads, C // n_heads).transpose(1, 2)


split_ex = exercise(
    "01.split_heads", notebook=NB, stars=2, minutes=5, signature="split_heads(t, n_heads) -> tensor (B, H, T, C // H)",
    task="Cut the channels of t (B, T, C) into n_heads heads of C // n_heads channels each, heads before positions.",
    hint="Head h owns channels h·D … (h+1)·D − 1 of every position: view as (B, T, H, D), then transpose(1, 2). "
         "A direct view to (B, H, T, D) mixes positions into heads.",
    reference=_split_heads_ref)


@split_ex.check
def _split_values(fn):
    t = _randn(2, 5, 12, seed=20)
    B, T, C = t.shape
    expect_close(fn(t, 3), _split_heads_ref(t, 3), "split_heads of a (2, 5, 12) tensor into 3 heads", mistakes=[
        (t.reshape(B, 3, T, C // 3), "a direct reshape to (B, H, T, D) slices the (T, C) block row-wise, so a 'head' "
                                     "holds pieces of several positions: view as (B, T, H, D), then transpose(1, 2)"),
        (t.view(B, T, C // 3, 3).permute(0, 3, 1, 2), "head h got every H-th channel (channels strided): view as "
                                                      "(B, T, H, D) with D = C // H last, so head h owns a contiguous block"),
        (t.view(B, T, 3, C // 3), "heads must come before positions: transpose(1, 2) to (B, H, T, D)")])


@split_ex.check
def _split_roundtrip(fn):
    t = _randn(1, 7, 32, seed=21, dtype=torch.float64)
    out = expect_shape(fn(t, 8), (1, 8, 7, 4), "split_heads of (1, 7, 32) into 8 heads")
    back = out.transpose(1, 2).reshape(1, 7, 32)
    expect_close(back, t, "merging the heads back (transpose(1, 2), reshape to (B, T, C))")


# ------------------------------------------------------------------ 01.sinusoidal_positions
def _sinusoidal_ref(n_positions, d_model):
    return P.sinusoidal_positions(n_positions, d_model)


sin_ex = exercise(
    "01.sinusoidal_positions", notebook=NB, stars=2, minutes=8,
    signature="sinusoidal_positions(n_positions, d_model) -> tensor (n_positions, d_model)",
    task="The original transformer's table: PE[pos, 2i] = sin(pos / 10000^(2i/d_model)), "
         "PE[pos, 2i+1] = cos(pos / 10000^(2i/d_model)).",
    hint="pos = torch.arange(n_positions)[:, None]; the frequencies 10000 ** (-torch.arange(0, d_model, 2) / d_model) "
         "(one per pair); fill the even columns pe[:, 0::2] with sin and the odd ones pe[:, 1::2] with cos.",
    reference=_sinusoidal_ref)


@sin_ex.check
def _sin_values(fn):
    n, d = 12, 8
    want = _sinusoidal_ref(n, d)
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    i2 = torch.arange(0, d, 2, dtype=torch.float64)
    concat = torch.cat([torch.sin(pos / 10000 ** (i2 / d)), torch.cos(pos / 10000 ** (i2 / d))], -1)
    half = torch.arange(d // 2, dtype=torch.float64)
    wrong_exp = torch.stack([torch.sin(pos / 10000 ** (half / d)), torch.cos(pos / 10000 ** (half / d))], -1).flatten(1)
    swapped = torch.stack([torch.cos(pos / 10000 ** (i2 / d)), torch.sin(pos / 10000 ** (i2 / d))], -1).flatten(1)
    expect_close(fn(n, d), want, "sinusoidal_positions(12, 8)", atol=1e-5, mistakes=[
        (concat, "all sines then all cosines: interleave them — sin in the even columns 0, 2, 4, …, cos in the odd ones"),
        (wrong_exp, "the exponent is i/d_model: it is 2i/d_model, where 2i is the even column index (0, 2, 4, …)"),
        (swapped, "sin and cos are swapped: even columns hold sin, odd columns cos")])


@sin_ex.check
def _sin_larger(fn):
    out = expect_shape(fn(64, 32), (64, 32), "sinusoidal_positions(64, 32)")
    expect_close(out, _sinusoidal_ref(64, 32), "sinusoidal_positions(64, 32)", atol=1e-5)
