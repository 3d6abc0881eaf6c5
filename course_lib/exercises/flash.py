"""Exercises of notebook 03 (FlashAttention from scratch); the library's twins are in course_lib.flash and
course_lib.memory. The reference of 03.merge_softmax_states is written here, from first principles, on the
unnormalised state (m, l, acc); the library's merge_attention_states works on normalised (out, lse) pairs and the
checks compare with it too."""
import math

import torch
import torch.nn.functional as F

from . import Wrong, exercise, expect_close, expect_number, expect_shape
from .. import flash as FL

NB = "03_flash_attention"
_g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=_g(seed), dtype=torch.float64).to(dtype)


def _finite(x, what, hint):
    if isinstance(x, torch.Tensor) and x.is_floating_point() and not torch.isfinite(x).all():
        raise Wrong(f"{what} has inf or NaN entries: {hint}")


# ------------------------------------------------------------------ 03.online_softmax
def _online_ref(x, block):
    return FL.online_softmax(x, block)


def _online_mistakes(x, block):
    """Outputs of plausible wrong streaming loops."""
    m = torch.full(x.shape[:-1] + (1,), -math.inf, dtype=x.dtype)
    l_norescale = torch.zeros_like(m)
    for s in range(0, x.shape[-1], block):
        c = x[..., s:s + block]
        m_new = torch.maximum(m, c.amax(-1, keepdim=True))
        l_norescale = l_norescale + torch.exp(c - m_new).sum(-1, keepdim=True)
        m = m_new
    last = x[..., (x.shape[-1] - 1) // block * block:]  # the last chunk
    return [(torch.exp(x - m) / l_norescale,
             "the running sum is not rescaled: when a chunk raises the max from m to m_new, every term summed so far "
             "was measured against m — multiply l by exp(m - m_new) before adding the chunk's exp(x - m_new)"),
            (torch.softmax(x, dim=0) if x.dim() > 1 else x * 0,
             "your weights sum to 1 down the columns: the softmax runs over the last axis, chunk along dim=-1"),
            (torch.exp(x - m) / torch.exp(last - m).sum(-1, keepdim=True),
             "l holds only the last chunk's sum: accumulate, l = l · exp(m - m_new) + Σ exp(chunk - m_new)"),
            (torch.exp(x - m) / torch.exp(x[..., :block] - m).sum(-1, keepdim=True),
             "l holds only the first chunk's sum: loop over every chunk, s in range(0, n, block)")]


online_ex = exercise(
    "03.online_softmax", notebook=NB, stars=2, minutes=10, signature="online_softmax(x, block) -> tensor, same shape as x",
    task="softmax over the last axis of x (..., n), reading x in chunks of `block` columns: one pass keeping a running "
         "max m and a running sum l of exp(x − m) per row (the rows at once, keepdim), then normalise. It must stay "
         "finite for scores in the thousands, and n need not be a multiple of block.",
    hint="m = torch.full(x.shape[:-1] + (1,), -math.inf), l = zeros. For each chunk c = x[..., s:s + block]: "
         "m_new = torch.maximum(m, c.amax(-1, keepdim=True)); l = l * torch.exp(m - m_new) + torch.exp(c - m_new).sum(-1, "
         "keepdim=True); m = m_new. At the end return torch.exp(x - m) / l.",
    reference=_online_ref)


@online_ex.check
def _online_values(fn):
    x = _randn(3, 10, seed=40, dtype=torch.float64) * 3 + torch.linspace(0, 8, 10, dtype=torch.float64)  # max rises
    out = fn(x, 4)
    expect_close(out, torch.softmax(x, -1), "online_softmax of a (3, 10) float64 row-drifting tensor, block 4",
                 mistakes=_online_mistakes(x, 4), atol=1e-10)


@online_ex.check
def _online_large(fn):
    x = _randn(2, 3, 37, seed=41) * 500 + 1000  # scores in the thousands: exp(x) alone overflows
    out = fn(x, 8)
    _finite(out, "online_softmax of scores around 1000", "exp(1000) overflows; subtract the running max inside the "
                                                         "loop (exp(chunk - m_new)) and in the final exp(x - m)")
    expect_close(out, torch.softmax(x, -1), "online_softmax of a (2, 3, 37) tensor around 1000, block 8",
                 mistakes=_online_mistakes(x, 8), atol=1e-5)


@online_ex.check
def _online_blocks(fn):
    x = _randn(4, 13, seed=42)
    for block in (1, 5, 13, 64):  # one column at a time, a ragged last chunk, one chunk, a chunk wider than the row
        expect_close(fn(x, block), torch.softmax(x, -1), f"online_softmax of a (4, 13) tensor with block {block}",
                     mistakes=_online_mistakes(x, block), atol=1e-6)


# ------------------------------------------------------------------ 03.tiled_attention
def _tiled_ref(q, k, v, block_q, block_k, is_causal=False, on_tile=None):
    """The notebook's tiled loop (section 3), on any leading dimensions, with its on_tile hook; course_lib.flash's
    flash_attention_forward is its tested twin on (B, H, T, d) tensors (the checks compare with it)."""
    return _tiled(q, k, v, block_q, block_k, is_causal, on_tile=on_tile)


def _tiled(q, k, v, bq, bk, causal, variant=None, on_tile=None):
    """The tiled loop: (out, lse); with `variant`, the same loop with one plausible mistake (see _TILED_HINTS)."""
    T_q, T_k, scale = q.shape[-2], k.shape[-2], 1 / math.sqrt(q.shape[-1])
    outs, lses = [], []
    for qs in range(0, T_q, bq):
        Qi = q[..., qs:qs + bq, :]
        m = torch.full((*Qi.shape[:-1], 1), -math.inf, dtype=q.dtype)
        l = torch.zeros_like(m)
        acc = torch.zeros(*Qi.shape[:-1], v.shape[-1], dtype=q.dtype)
        k_end = min(qs + Qi.shape[-2], T_k) if causal and variant != "no_mask" else T_k
        for ks in range(0, k_end, bk):
            Kj, Vj = k[..., ks:min(ks + bk, k_end), :], v[..., ks:min(ks + bk, k_end), :]
            S = Qi @ Kj.transpose(-2, -1) * (1.0 if variant == "no_scale" else scale)
            if causal and variant != "no_mask":
                rows = torch.arange(qs, qs + S.shape[-2])[:, None]
                cols = torch.arange(ks, ks + S.shape[-1])[None, :]
                S = S.masked_fill(cols > rows, -math.inf)
            m_new = torch.maximum(m, S.amax(-1, keepdim=True))
            P = torch.exp(S - m_new)
            alpha = torch.exp(m - m_new)
            l = (l if variant == "l_not_rescaled" else alpha * l) + P.sum(-1, keepdim=True)
            acc = (acc if variant == "acc_not_rescaled" else alpha * acc) + P @ Vj
            m = m_new
            if on_tile is not None:
                on_tile(qs, ks, m, l, acc)
        outs.append(acc / l)
        lse_block = {"lse_no_max": torch.log(l), "lse_no_log": m + l}.get(variant, m + torch.log(l))
        lses.append(lse_block.squeeze(-1))
    return torch.cat(outs, -2), torch.cat(lses, -1)


_TILED_HINTS = {
    "acc_not_rescaled": "acc is not rescaled: when the running max rises from m to m_new, the output accumulated so far "
                        "was weighted by exp(s - m) — multiply acc by alpha = exp(m - m_new) before adding P @ V_j",
    "l_not_rescaled": "the running sum l is not rescaled: l = alpha · l + P.sum(-1), with alpha = exp(m - m_new)",
    "no_scale": "scores are not scaled: S = Q_i K_jᵀ / √d",
    "no_mask": "is_causal=True but a query sees later keys: skip the key blocks past the query block and fill the "
               "scores with col > row with -inf inside the straddling tiles",
}


def _tiled_case(fn, q, k, v, bq, bk, causal, what):
    got = fn(q, k, v, bq, bk, is_causal=causal) if causal else fn(q, k, v, bq, bk)
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        raise Wrong(f"{what}: return the pair (out, lse), got {type(got).__name__}")
    out, lse = got
    four = lambda t: t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))  # noqa: E731  (B, H, T, d) for the library
    want_lse = FL.flash_attention_forward(four(q), four(k), four(v), is_causal=causal, block_q=bq,
                                          block_k=bk)[1].reshape(q.shape[:-1])
    want_out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    tol = 1e-10 if q.dtype == torch.float64 else 1e-5
    mistakes = [(_tiled(q, k, v, bq, bk, causal, name)[0], hint) for name, hint in _TILED_HINTS.items()
                if causal or name != "no_mask"]
    expect_close(out, want_out, f"out of {what}", mistakes=mistakes, atol=tol)
    lse_mistakes = [(_tiled(q, k, v, bq, bk, causal, "lse_no_max")[1],
                     "lse misses the max: the log-sum-exp is m + log(l), since l = Σ exp(s - m)"),
                    (_tiled(q, k, v, bq, bk, causal, "lse_no_log")[1], "lse = m + l: take the log, m + log(l)")]
    expect_close(lse, want_lse.to(lse.dtype) if isinstance(lse, torch.Tensor) else want_lse, f"lse of {what}",
                 mistakes=lse_mistakes, atol=tol,
                 otherwise="lse (..., T_q) is the log-sum-exp of each query's scaled scores: m + log(l), squeezed.")


tiled_ex = exercise(
    "03.tiled_attention", notebook=NB, stars=3, minutes=20,
    signature="tiled_attention(q, k, v, block_q, block_k, is_causal=False, on_tile=None) -> (out, lse)",
    task="FlashAttention's forward for q (..., T_q, d), k (..., T_k, d), v (..., T_k, d_v): for each block of block_q "
         "queries, stream the key/value blocks of block_k rows, keeping the running max m, sum l and unnormalised "
         "output acc ((..., rows, 1), (..., rows, 1), (..., rows, d_v)); causal = top-left (query i sees keys j ≤ i). "
         "Return out (..., T_q, d_v) and the log-sum-exp lse (..., T_q); if on_tile is given, call "
         "on_tile(qs, ks, m, l, acc) after each tile (section 5 draws them).",
    hint="Per tile: S = Q_i K_jᵀ / √d (causal: -inf where col > row, and skip the key blocks that start after the "
         "block's last query); m_new = max(m, rowmax S); P = exp(S − m_new); alpha = exp(m − m_new); "
         "l = alpha·l + rowsum P; acc = alpha·acc + P V_j; m = m_new. After the last key block: out = acc / l, "
         "lse = m + log l.",
    reference=_tiled_ref)


@tiled_ex.check
def _tiled_plain(fn):
    q, k, v = _randn(2, 3, 10, 8, seed=43), _randn(2, 3, 13, 8, seed=44), _randn(2, 3, 13, 5, seed=45)
    k = 3 * k  # spread the scores: the running max moves between tiles
    _tiled_case(fn, q, k, v, 4, 5, False, "tiled_attention with T_q = 10, T_k = 13, blocks 4 × 5")


@tiled_ex.check
def _tiled_causal(fn):
    q, k, v = (_randn(1, 2, 11, 8, seed=s, dtype=torch.float64) * (3 if s == 47 else 1) for s in (46, 47, 48))
    _tiled_case(fn, q, k, v, 3, 4, True, "causal tiled_attention, T = 11, blocks 3 × 4, float64")


@tiled_ex.check
def _tiled_shapes(fn):
    q, k, v = _randn(6, 8, seed=49), _randn(9, 8, seed=50), _randn(9, 3, seed=51)
    out, lse = fn(q, k, v, 4, 4)
    expect_shape(out, (6, 3), "out for q (6, 8), k (9, 8), v (9, 3) (no batch dimensions)")
    expect_shape(lse, (6,), "lse for q (6, 8) (one number per query)")
    _tiled_case(fn, q, k, v, 16, 16, False, "tiled_attention with blocks larger than T (one tile)")


@tiled_ex.check
def _tiled_hook(fn):
    q, k, v = (_randn(12, 4, seed=s, dtype=torch.float64) for s in (52, 53, 54))
    seen = []
    fn(q, k, v, 4, 4, is_causal=True, on_tile=lambda qs, ks, m, l, acc: seen.append((qs, ks, tuple(acc.shape))))
    want = [(qs, ks, (4, 4)) for qs in (0, 4, 8) for ks in range(0, qs + 4, 4)]
    if [s[:2] for s in seen] != [w[:2] for w in want]:
        raise Wrong(f"on_tile was called for the tiles {[s[:2] for s in seen]}; a causal T = 12 with blocks of 4 "
                    f"computes {[w[:2] for w in want]} (query block start, key block start), in loop order — call "
                    "on_tile(qs, ks, m, l, acc) after each tile's update, and skip the tiles above the diagonal")
    if any(s[2] != w[2] for s, w in zip(seen, want)):
        raise Wrong("on_tile got an acc of the wrong shape: pass the running (rows, d_v) accumulator of the query block")


# ------------------------------------------------------------------ 03.predict_standard_peak_bytes
def _standard_attention(q, k, v):
    S = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    P = torch.softmax(S, dim=-1)
    return P @ v


def _measured_peak(T=1024, d=64):
    from ..memory import peak_memory
    q, k, v = (_randn(1, 1, T, d, seed=s) for s in (55, 56, 57))
    return peak_memory(_standard_attention, q, k, v)[1]


predict_peak = exercise(
    "03.predict_standard_peak_bytes", notebook=NB, stars=2, minutes=5, kind="predict",
    signature="predict_standard_peak_bytes() -> int",
    task="Before running section 6: standard_attention (section 1) on q, k, v of shape (1, 1, 1024, 64), float32. "
         "Return your prediction of its peak extra memory in bytes (the inputs not counted, the output counted); the "
         "check measures it with peak_memory.",
    hint="List the tensors standard_attention creates and which are alive at once: q·kᵀ (T × T), the scaled S (T × T; "
         "the unscaled one is freed right after), P = softmax(S) (T × T) while S is still alive, then the output "
         "(T × d). 4 bytes per float32 number.",
    reference=lambda: 8 * 1024 ** 2 + 4 * 1024 * 64)


@predict_peak.check
def _predict_peak(fn):
    guess = fn()
    T, d = 1024, 64
    if isinstance(guess, torch.Tensor) and guess.numel() == 1:
        guess = guess.item()
    if isinstance(guess, bool) or not isinstance(guess, (int, float)):
        raise Wrong(f"return a number of bytes, got {type(guess).__name__}")
    measured = _measured_peak(T, d)
    near = lambda a, b: math.isclose(a, b, rel_tol=0.05)  # noqa: E731
    if near(guess, measured):
        return
    for wrong, why in ((4 * T * T, "one T × T matrix: S is still alive while P = softmax(S) is written, so two "
                                   "T × T float32 matrices coexist (8 T² bytes), plus the output"),
                       (12 * T * T, "three T × T matrices: the unscaled q·kᵀ is freed as soon as S = q·kᵀ/√d exists, "
                                    "so at most two coexist (8 T² bytes), plus the output"),
                       (2 * T * T, "you counted numbers, not bytes: float32 is 4 bytes per number"),
                       (8 * T * T * d, "the T × T matrices do not carry d: S is (T, T), only the output is (T, d)"),
                       (4 * T * d, "the output alone: the T × T scores and probabilities exist during the call too")):
        if near(guess, wrong):
            raise Wrong(f"measured {measured:,} bytes; {why}")
    raise Wrong(f"measured {measured:,} bytes, you predicted {guess:,}. Count the T × T matrices alive at once "
                "(4 bytes per number) and the (T, d) output.")


# ------------------------------------------------------------------ 03.merge_softmax_states
def _merge_ref(m1, l1, acc1, m2, l2, acc2):
    """From first principles: re-express both states against the common max, then sums add."""
    m = torch.maximum(m1, m2)
    c1 = torch.exp(m1 - m)
    c2 = torch.exp(m2 - m)
    return m, c1 * l1 + c2 * l2, c1[..., None] * acc1 + c2[..., None] * acc2


def _state(q, k, v):
    """(m (..., T_q), l (..., T_q), acc (..., T_q, d_v)) of queries q over keys k."""
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    m = s.amax(-1)
    p = torch.exp(s - m[..., None])
    return m, p.sum(-1), p @ v


def _merge_mistakes(m1, l1, acc1, m2, l2, acc2):
    m = torch.maximum(m1, m2)
    c1, c2 = torch.exp(m1 - m), torch.exp(m2 - m)
    good_l, good_acc = c1 * l1 + c2 * l2, c1[..., None] * acc1 + c2[..., None] * acc2
    i1, i2 = torch.exp(m - m1), torch.exp(m - m2)
    return {
        "l": [(l1 + l2, "l is the sum of the two l's without rescaling: each l_i was measured against its own max m_i, "
                        "re-express it against the common max, l = l1·exp(m1 − m) + l2·exp(m2 − m)"),
              (torch.maximum(l1, l2), "l is the max of the two l's: the sums of both blocks add, after rescaling "
                                      "each by exp(m_i − m)"),
              (i1 * l1 + i2 * l2, "the rescaling is inverted: multiply by exp(m_i − m) (≤ 1), not exp(m − m_i)")],
        "acc": [(acc1 + acc2, "acc is the sum of the two acc's without rescaling: multiply each by exp(m_i − m) "
                              "(unsqueezed to (..., T_q, 1)) before adding"),
                (torch.maximum(acc1, acc2), "acc is the max of the two acc's: the weighted sums add, "
                                            "acc = acc1·exp(m1 − m) + acc2·exp(m2 − m)"),
                (good_acc / good_l[..., None], "acc came back normalised (divided by l): the state keeps the "
                                               "unnormalised sum Σ exp(s − m)·v; divide by l only at the very end"),
                (i1[..., None] * acc1 + i2[..., None] * acc2, "the rescaling is inverted: multiply by exp(m_i − m) "
                                                              "(≤ 1), not exp(m − m_i)"),
                ((c1 * l1)[..., None] * acc1 + (c2 * l2)[..., None] * acc2,
                 "acc is weighted by l_i·exp(m_i − m): acc_i is already a sum of exp(s − m_i)·v, so only the rescaling "
                 "exp(m_i − m) applies")],
        "m": [(m1 + m2, "m is the running max of the scores over both blocks: torch.maximum(m1, m2), not their sum"),
              (torch.logaddexp(m1, m2), "m is the max of the scores over both blocks: torch.maximum(m1, m2), not "
                                        "their log-sum-exp"),
              (torch.minimum(m1, m2), "m is the max of the two maxima, not the min")],
    }


def _merge_case(fn, q, k1, v1, k2, v2, what):
    s1, s2 = _state(q, k1, v1), _state(q, k2, v2)
    got = fn(*s1, *s2)
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        raise Wrong(f"{what}: return the merged state as a tuple (m, l, acc), got {type(got).__name__}")
    m, l, acc = got
    want = _merge_ref(*s1, *s2)
    mistakes = _merge_mistakes(*s1, *s2)
    tol = 1e-10 if q.dtype == torch.float64 else 1e-5
    expect_close(m, want[0], f"m of {what}", mistakes=mistakes["m"], atol=tol)
    expect_close(l, want[1], f"l of {what}", mistakes=mistakes["l"], atol=tol)
    expect_close(acc, want[2], f"acc of {what}", mistakes=mistakes["acc"], atol=tol)
    # the merged state is the state over the concatenated keys: full softmax attention and its log-sum-exp
    k, v = torch.cat([k1, k2], -2), torch.cat([v1, v2], -2)
    expect_close(acc / l[..., None], F.scaled_dot_product_attention(q, k, v),
                 f"acc / l of {what} against softmax attention over both blocks' keys", atol=tol)
    lib_out, lib_lse = FL.merge_attention_states(s1[2] / s1[1][..., None], s1[0] + s1[1].log(),
                                                 s2[2] / s2[1][..., None], s2[0] + s2[1].log())
    expect_close(m + l.log(), lib_lse, f"m + log(l) of {what} against course_lib.flash.merge_attention_states",
                 atol=tol)


merge_ex = exercise(
    "03.merge_softmax_states", notebook=NB, stars=2, minutes=10,
    signature="merge_softmax_states(m1, l1, acc1, m2, l2, acc2) -> (m, l, acc)",
    task="Two partial attention states of the same queries over disjoint blocks of keys — m (..., T_q) the max of the "
         "scores, l (..., T_q) the sum of exp(score − m), acc (..., T_q, d_v) the sum of exp(score − m)·v — merged "
         "into the state over both blocks.",
    hint="m = torch.maximum(m1, m2); re-express each part against it: c1 = exp(m1 − m), c2 = exp(m2 − m); then "
         "l = c1·l1 + c2·l2 and acc = c1[..., None]·acc1 + c2[..., None]·acc2 (the factors broadcast over d_v).",
    reference=_merge_ref)


@merge_ex.check
def _merge_plain(fn):
    q = _randn(5, 8, seed=60)
    k1, v1 = _randn(7, 8, seed=61) * 3, _randn(7, 4, seed=62)
    k2, v2 = _randn(3, 8, seed=63) * 3, _randn(3, 4, seed=64)
    _merge_case(fn, q, k1, v1, k2, v2, "the merge of blocks of 7 and 3 keys (5 queries, d_v = 4)")


@merge_ex.check
def _merge_batched(fn):
    q = _randn(2, 3, 4, 16, seed=65, dtype=torch.float64)
    k1, v1 = _randn(2, 3, 9, 16, seed=66, dtype=torch.float64) * 4, _randn(2, 3, 9, 5, seed=67, dtype=torch.float64)
    k2, v2 = _randn(2, 3, 20, 16, seed=68, dtype=torch.float64), _randn(2, 3, 20, 5, seed=69, dtype=torch.float64)
    _merge_case(fn, q, k1, v1, k2, v2, "a (2, 3)-batched float64 merge, blocks of 9 and 20 keys")


@merge_ex.check
def _merge_order_and_empty(fn):
    q = _randn(3, 4, 8, seed=70, dtype=torch.float64)
    k1, v1 = _randn(3, 6, 8, seed=71, dtype=torch.float64) * 3, _randn(3, 6, 8, seed=72, dtype=torch.float64)
    k2, v2 = _randn(3, 5, 8, seed=73, dtype=torch.float64) * 3, _randn(3, 5, 8, seed=74, dtype=torch.float64)
    s1, s2 = _state(q, k1, v1), _state(q, k2, v2)
    for x, y in zip(fn(*s1, *s2), fn(*s2, *s1)):
        expect_close(x, y, "merge(a, b) against merge(b, a): the order of the blocks must not matter", atol=1e-12)
    empty = (torch.full_like(s1[0], -math.inf), torch.zeros_like(s1[1]), torch.zeros_like(s1[2]))
    got = fn(*s1, *empty)
    for x, y, name in zip(got, s1, ("m", "l", "acc")):
        _finite(x if name != "m" else x.clamp_min(-1e300), f"{name} of a merge with an empty block",
                "a block that saw no key (m = -inf, l = 0, acc = 0) must leave the other state unchanged")
        expect_close(x, y, f"{name} of the merge with a block that saw no key (m = -inf, l = 0, acc = 0)", atol=1e-12,
                     otherwise="An empty block is the identity: exp(-inf − m) = 0 drops it.")
