"""FlashAttention from scratch: the online softmax, a tiled forward, a recomputing backward.

Standard attention writes the (T_q, T_k) score matrix, reads it back for the softmax,
writes the probabilities and reads them again for the product with V. FlashAttention
(Dao et al. 2022; loop order of FlashAttention-2, Dao 2023) computes the same numbers
block by block and never holds more than one (block_q, block_k) tile of scores:

    for each query block Q_i:                      running max m, running sum l, output acc
        for each key/value block K_j, V_j:
            S    = Q_i K_j^T * scale
            m'   = max(m, rowmax(S))
            P    = exp(S - m')                     unnormalised probabilities of this tile
            l    = l * exp(m - m') + rowsum(P)     rescale what came before to the new max
            acc  = acc * exp(m - m') + P V_j
        O_i = acc / l                              normalise once, at the end (FlashAttention-2; FA1 rescaled O every step)
        L_i = m + log(l)                           log-sum-exp, saved for the backward

The backward recomputes each tile's probabilities from L (P = exp(S - L)) instead of
storing them, so training needs O(T) extra memory too.

Fit for decoding: grouped K/V heads (GQA, MQA) are taken as they are, the query heads of a
group stacked as rows of one product (K and V are never repeated), and `causal_alignment`
places the causal diagonal top-left (torch's is_causal) or bottom-right (a few new queries
against a longer KV cache, as flash-attn >= 2.1). Partial states (out, lse) over disjoint
keys merge exactly (`merge_attention_states`), which is split-K decoding (`flash_decoding`,
FlashDecoding) and ring attention's step. The chunking idea is Rabe & Staats' (2021,
"Self-attention Does Not Need O(n^2) Memory"); FlashAttention's contribution is doing it
IO-aware, in one fused kernel that keeps the tiles in SRAM.

Also here: a simulated two-level memory that counts the HBM traffic of standard and tiled
attention (`standard_attention_io`, `flash_attention_io`). The peak-memory measurement is
`course_lib.memory.peak_memory`.
"""
import math
import numbers

import torch

# Chosen for speed on a 2-core CPU with d = 64 (python -m course_lib.bench flash; notebook 03):
# a 256 x 512 float32 score tile is 512 KiB per head; with Q_i, acc, K_j, V_j the working set is 896 KiB, more
# than a 512 KiB L2 but a small part of a last-level cache (notebook 03 section 9 prints this CPU's sizes).
DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 512


def online_softmax(x, block):
    """softmax(x) over the last dimension, reading x in chunks of `block` (Milakov & Gimelshein 2018).

    One pass keeps a running max m and a running sum l of exp(x - m); when a chunk raises
    the max, the sum so far is rescaled by exp(m_old - m_new). A second pass normalises.

    Taught inline in notebook 03 §2 (`online_softmax_row`); the notebook asserts they agree."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or not x.is_floating_point():
        got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating torch.Tensor with at least one dimension (the softmax runs over "
                         f"the last), got a {got}; convert integers with .float()")
    block = _check_block("block", block)
    m = torch.full(x.shape[:-1] + (1,), -math.inf, dtype=x.dtype, device=x.device)
    l = torch.zeros_like(m)
    for s in range(0, x.shape[-1], block):
        chunk = x[..., s:s + block]
        m_new = torch.maximum(m, chunk.amax(-1, keepdim=True))
        l = l * torch.exp(m - m_new) + torch.exp(chunk - m_new).sum(-1, keepdim=True)
        m = m_new
    return torch.exp(x - m) / l


def _check_block(name, value, default=None):
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer (a number of positions per block), got {value!r}")
    return value


def _check_sram(sram_size):
    if isinstance(sram_size, bool) or not isinstance(sram_size, int) or sram_size < 1:
        raise ValueError(f"sram_size must be a positive number of elements (an int such as 4096), got {sram_size!r}")
    return sram_size


CAUSAL_ALIGNMENTS = ("top_left", "bottom_right")


def _check(q, k, v, scale, block_q, block_k, is_causal=False, causal_alignment="top_left"):
    """Validate flash attention's inputs; return (scale, block_q, block_k)."""
    if not isinstance(is_causal, bool):
        raise ValueError(f"is_causal must be True or False, got {is_causal!r}")
    if not isinstance(causal_alignment, str) or causal_alignment not in CAUSAL_ALIGNMENTS:
        raise ValueError(f"causal_alignment must be 'top_left' (torch's is_causal: query i sees keys j <= i) or "
                         f"'bottom_right' (decoding: query i sees keys j <= i + T_k - T_q), got {causal_alignment!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (batch, heads, T, d), got {tuple(t.shape)}; "
                             f"add the missing dimensions, e.g. {name}[None, None] for a single (T, d) head")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got {t.dtype}; convert with .float()")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; "
                         "convert them with .to(q.dtype)")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}; "
                         "move them with .to(q.device)")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"q, k, v must have the same batch size (dim 0), got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same number of K/V heads (dim 1), got k {tuple(k.shape)} and "
                         f"v {tuple(v.shape)}")
    H, H_kv = q.shape[1], k.shape[1]
    if (H_kv == 0 and H != 0) or (H_kv != 0 and H % H_kv != 0):
        raise ValueError(f"q has {H} heads and k, v have {H_kv}: the number of query heads must be a multiple of the "
                         f"number of K/V heads (grouped-query attention: each K/V head serves H // H_kv query heads); "
                         f"give k and v a number of heads that divides {H} (1 for multi-query, {H} for multi-head)")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same last dimension d, got q {tuple(q.shape)} and k {tuple(k.shape)}")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"k and v must have the same number of positions T_k (dim 2), "
                         f"got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if min(q.shape[-2], k.shape[-2], q.shape[-1], v.shape[-1]) == 0:
        raise ValueError(f"attention needs at least one query, one key and d >= 1, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    elif isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite number (default 1/sqrt(d)), got {scale!r}")
    return (float(scale), _check_block("block_q", block_q, DEFAULT_BLOCK_Q),
            _check_block("block_k", block_k, DEFAULT_BLOCK_K))


def _work_dtype(dtype):
    """float16/bfloat16 are accumulated in float32, as FlashAttention's kernels do."""
    return torch.promote_types(dtype, torch.float32)


def _heads(t, dtype):
    """(B, H, T, d) -> (B*H, T, d) in the working dtype."""
    return t.reshape(-1, *t.shape[2:]).to(dtype)


def _query_rows(t, n_kv_heads, dtype):
    """(B, H, T_q, x) -> (B*H_kv, T_q*G, x), G = H // H_kv: the G query heads that share a K/V head become rows
    of one matrix, interleaved by position (row t*G + g is position t of the group's head g), so a block of
    positions is a contiguous run of rows and one product with the K/V head serves the whole group; no K/V is
    repeated. With G = 1 this is (B*H, T_q, x)."""
    B, H, T_q, x = t.shape
    G = H // n_kv_heads if n_kv_heads else 1
    return t.reshape(B, n_kv_heads, G, T_q, x).transpose(2, 3).reshape(B * n_kv_heads, T_q * G, x).to(dtype)


def _from_query_rows(t, B, H, n_kv_heads, T_q):
    """(B*H_kv, T_q*G, x) -> (B, H, T_q, x): the inverse of _query_rows."""
    G, x = (H // n_kv_heads if n_kv_heads else 1), t.shape[-1]
    return t.reshape(B, n_kv_heads, T_q, G, x).transpose(2, 3).reshape(B, H, T_q, x)


def _causal_offset(is_causal, causal_alignment, T_q, T_k):
    """The causal mask's diagonal: query i may see key j <= i + offset (None: no mask)."""
    if not is_causal:
        return None
    return T_k - T_q if causal_alignment == "bottom_right" else 0


def _key_end(offset, q_end, T_k):
    """Keys a query block [.., q_end) may see: [0, key_end). 0 when none of them sees a key."""
    return T_k if offset is None else max(0, min(q_end + offset, T_k))


def _mask_tile(S, offset, qs, ks, group=1):
    """Set the scores of keys after their query's diagonal to -inf in a tile whose rows start at position qs
    (`group` rows per position, see _query_rows) and whose columns start at key ks."""
    if offset is not None and ks + S.shape[-1] - 1 > qs + offset:  # the tile reaches above the diagonal
        rows = torch.arange(qs, qs + S.shape[-2] // group, device=S.device)
        if group > 1:
            rows = rows.repeat_interleave(group)
        cols = torch.arange(ks, ks + S.shape[-1], device=S.device)[None, :]
        S.masked_fill_(cols > rows[:, None] + offset, -math.inf)
    return S


def _forward(q, k, v, scale, block_q, block_k, offset):
    """The tiled forward on checked inputs: (out (B, H, T_q, d_v), lse (B, H, T_q)), both in the working dtype.

    offset: None (no mask) or the causal diagonal (query i sees keys j <= i + offset). Rows that see no key
    (offset < 0) get out = 0 and lse = -inf."""
    B, H, T_q, _ = q.shape
    H_kv, T_k, d_v = k.shape[1], k.shape[-2], v.shape[-1]
    G = H // H_kv if H_kv else 1  # query heads per K/V head
    work = _work_dtype(q.dtype)
    q3, k3, v3 = _query_rows(q, H_kv, work), _heads(k, work), _heads(v, work)  # (BH_kv, T_q*G, d), (BH_kv, T_k, d)
    out = torch.empty(B * H_kv, T_q * G, d_v, dtype=work, device=q.device)
    lse = torch.empty(B * H_kv, T_q * G, 1, dtype=work, device=q.device)
    for qs in range(0, T_q, block_q):
        qe = min(qs + block_q, T_q)
        rows, k_end = slice(qs * G, qe * G), _key_end(offset, qe, T_k)
        if k_end == 0:  # bottom-right with T_q > T_k: no query of this block sees a key
            out[:, rows], lse[:, rows] = 0.0, -math.inf
            continue
        some_see_none = offset is not None and qs + offset < 0  # its first queries see no key
        Qi = q3[:, rows] * scale  # (BH_kv, G*bq, d)
        m = torch.full((B * H_kv, (qe - qs) * G, 1), -math.inf, dtype=work, device=q.device)  # running max
        l = torch.zeros_like(m)  # running sum of exp(s - m)
        acc = torch.zeros(B * H_kv, (qe - qs) * G, d_v, dtype=work, device=q.device)  # unnormalised output
        for ks in range(0, k_end, block_k):
            ke = min(ks + block_k, k_end)
            S = _mask_tile(torch.bmm(Qi, k3[:, ks:ke].mT), offset, qs, ks, G)  # (BH_kv, G*bq, bk)
            m_new = torch.maximum(m, S.amax(-1, keepdim=True))
            if some_see_none:  # a row with no key keeps m = -inf; exponentiate it against 0, not -inf (NaN)
                m_new = m_new.masked_fill(m_new.isneginf(), 0.0)
            P = S.sub_(m_new).exp_()  # in place: the tile's scores become its probabilities
            alpha = (m - m_new).exp_()  # rescales what was accumulated under the old max
            l.mul_(alpha).add_(P.sum(-1, keepdim=True))
            acc.mul_(alpha).baddbmm_(P, v3[:, ks:ke])
            m = m_new
        if some_see_none:  # the rows that saw no key have l = 0: give them out = 0 and lse = -inf
            empty = l == 0
            m, l = m.masked_fill(empty, -math.inf), l.masked_fill(empty, 1.0)
        out[:, rows] = acc.div_(l)
        lse[:, rows] = m + l.log()
    return _from_query_rows(out, B, H, H_kv, T_q), _from_query_rows(lse, B, H, H_kv, T_q)[..., 0]


@torch.no_grad()
def flash_attention_forward(q, k, v, is_causal=False, scale=None, block_q=None, block_k=None,
                            causal_alignment="top_left"):
    """The tiled forward: (out (B, H, T_q, d_v), lse (B, H, T_q)), no autograd. Arguments as flash_attention.

    lse is the log-sum-exp of each query's scaled scores, log sum_j exp(s_j): all the
    backward needs to rebuild any probability, p_j = exp(s_j - lse). It is -inf (and out 0)
    for a query that sees no key (bottom_right with T_q > T_k).

    Taught inline in notebook 03 §3 (`tiled_attention`, one K/V head per query head); the notebook
    asserts they agree."""
    scale, block_q, block_k = _check(q, k, v, scale, block_q, block_k, is_causal, causal_alignment)
    offset = _causal_offset(is_causal, causal_alignment, q.shape[-2], k.shape[-2])
    out, lse = _forward(q, k, v, scale, block_q, block_k, offset)
    return out.to(q.dtype), lse


@torch.no_grad()
def flash_attention_backward(dout, q, k, v, out, lse, is_causal=False, scale=None, block_q=None, block_k=None,
                             causal_alignment="top_left"):
    """Gradients (dq, dk, dv) of flash attention, recomputing each tile's probabilities from lse.

    With P = exp(S - lse), dP = dO V^T and D = rowsum(dO * O) (= rowsum(P * dP)):
    dV = P^T dO,  dS = P * (dP - D),  dQ = scale * dS K,  dK = scale * dS^T Q.
    With grouped K/V heads, dK and dV of a K/V head sum over the query heads that share it
    (one product over the group's rows does it). A query that sees no key gets zero gradients.

    Taught inline in notebook 03 §8 (`tiled_attention_backward`, not causal); the notebook asserts
    they agree."""
    scale, block_q, block_k = _check(q, k, v, scale, block_q, block_k, is_causal, causal_alignment)
    B, H, T_q, _ = q.shape
    H_kv, T_k, d_v = k.shape[1], k.shape[-2], v.shape[-1]
    for name, t in (("dout", dout), ("out", out), ("lse", lse)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor (out and lse from flash_attention_forward), "
                             f"got {type(t).__name__}")
    if tuple(dout.shape) != (B, H, T_q, d_v) or tuple(out.shape) != (B, H, T_q, d_v):
        raise ValueError(f"dout and out must have the output's shape {(B, H, T_q, d_v)}, "
                         f"got {tuple(dout.shape)} and {tuple(out.shape)}")
    if tuple(lse.shape) != (B, H, T_q):
        raise ValueError(f"lse must have shape {(B, H, T_q)} (from flash_attention_forward), got {tuple(lse.shape)}")
    offset = _causal_offset(is_causal, causal_alignment, T_q, T_k)
    G = H // H_kv if H_kv else 1
    work = _work_dtype(q.dtype)
    q3, k3, v3 = _query_rows(q, H_kv, work), _heads(k, work), _heads(v, work)
    o3, do3 = _query_rows(out, H_kv, work), _query_rows(dout, H_kv, work)
    lse3 = _query_rows(lse[..., None], H_kv, work)  # (BH_kv, T_q*G, 1)
    D = (do3 * o3).sum(-1, keepdim=True)  # (BH_kv, T_q*G, 1)
    dq, dk, dv = torch.zeros_like(q3), torch.zeros_like(k3), torch.zeros_like(v3)
    for qs in range(0, T_q, block_q):
        qe = min(qs + block_q, T_q)
        rows, k_end = slice(qs * G, qe * G), _key_end(offset, qe, T_k)
        Qi, dOi, Li, Di = q3[:, rows], do3[:, rows], lse3[:, rows], D[:, rows]
        if offset is not None and qs + offset < 0:  # rows that see no key (lse = -inf): P = exp(S - inf) = 0
            Li = Li.masked_fill(Li.isneginf(), math.inf)
        for ks in range(0, k_end, block_k):
            ke = min(ks + block_k, k_end)
            Kj, Vj = k3[:, ks:ke], v3[:, ks:ke]
            S = _mask_tile(torch.bmm(Qi, Kj.mT).mul_(scale), offset, qs, ks, G)
            P = S.sub_(Li).exp_()  # the tile's probabilities, recomputed
            dv[:, ks:ke].baddbmm_(P.mT, dOi)  # the product sums over the group's rows: its heads share V_j
            dS = torch.bmm(dOi, Vj.mT).sub_(Di).mul_(P)  # dP - D, times P
            dq[:, rows].baddbmm_(dS, Kj, alpha=scale)
            dk[:, ks:ke].baddbmm_(dS.mT, Qi, alpha=scale)
    return (_from_query_rows(dq, B, H, H_kv, T_q).contiguous().to(q.dtype),
            dk.reshape(k.shape).to(k.dtype), dv.reshape(v.shape).to(v.dtype))


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd glue: the forward saves q, k, v, out and lse (O(T) memory), not the probabilities.

    apply(q, k, v, *options), options as flash_attention_forward's after v (is_causal, scale,
    block_q, block_k, causal_alignment), any prefix of them."""

    @staticmethod
    def forward(ctx, q, k, v, *options):
        out, lse = flash_attention_forward(q, k, v, *options)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.options = options
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(dout, q, k, v, out, lse, *ctx.options)
        return (dq, dk, dv) + (None,) * len(ctx.options)


def flash_attention(q, k, v, is_causal=False, scale=None, block_q=None, block_k=None, causal_alignment="top_left"):
    """softmax(q k^T * scale) v, tiled, with a recomputing backward; the same numbers as
    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale,
    enable_gqa=True) (for the default causal_alignment).

    q (B, H, T_q, d), k (B, H_kv, T_k, d), v (B, H_kv, T_k, d_v); any T_q, T_k (not only multiples
    of the blocks). Grouped K/V heads: H_kv must divide H (H_kv = H: multi-head; 1 < H_kv < H:
    grouped-query; H_kv = 1: multi-query); query head h uses K/V head h // (H // H_kv), as
    repeat_interleave would give it, but K and V are never repeated, and their gradients sum over
    the query heads that share them.

    is_causal masks the keys after each query; causal_alignment says where the diagonal sits when
    T_q != T_k. For T_q = 2 queries, T_k = 5 keys (1 = may attend):

        "top_left" (default; torch's is_causal)     "bottom_right" (flash-attn >= 2.1; decoding)
            1 0 0 0 0                                   1 1 1 1 0
            1 1 0 0 0                                   1 1 1 1 1
        query i sees keys j <= i                     query i sees keys j <= i + T_k - T_q

    bottom_right treats the queries as the last T_q positions of the keys' sequence: a block of new
    tokens against a KV cache, where top_left would silently hide the newest keys. For T_q = 5,
    T_k = 2, bottom_right leaves the first 3 queries no key: their output is zero (lse -inf,
    gradients zero), as in course_lib.attention and flash-attn. For T_q == T_k the two agree.

    scale defaults to 1/sqrt(d); block_q/block_k default to DEFAULT_BLOCK_Q/DEFAULT_BLOCK_K.
    float16/bfloat16 inputs are computed in float32 and returned in their own dtype.

    The grouped rows are taught inline in notebook 03 §10 (without tiles), and both alignments are
    shown there; the notebook asserts they agree with SDPA(enable_gqa=True) and an explicit mask."""
    _check(q, k, v, scale, block_q, block_k, is_causal, causal_alignment)  # fail here, with the caller's names
    return FlashAttentionFunction.apply(q, k, v, is_causal, scale, block_q, block_k, causal_alignment)


# ---- merging softmax states: split-K decoding (FlashDecoding) -----------------------------------

def _check_state(name, out, lse):
    if not isinstance(out, torch.Tensor) or not isinstance(lse, torch.Tensor):
        raise ValueError(f"state {name} must be two torch.Tensors (out, lse), as flash_attention_forward returns, "
                         f"got {type(out).__name__} and {type(lse).__name__}")
    if not out.is_floating_point() or not lse.is_floating_point():
        raise ValueError(f"state {name} must hold floating tensors, got {out.dtype} and {lse.dtype}; "
                         "convert with .float()")
    if out.dim() < 1 or tuple(lse.shape) != tuple(out.shape[:-1]):
        raise ValueError(f"state {name}: lse must have out's shape without its last dimension, got out "
                         f"{tuple(out.shape)} and lse {tuple(lse.shape)}; lse holds one number per query")


def merge_attention_states(out_a, lse_a, out_b, lse_b):
    """Merge two partial attentions of the same queries, over two disjoint sets of keys, into the attention
    over all of them: exactly, up to rounding.

    A state is (out, lse) as flash_attention_forward returns it: out (..., T_q, d_v) the softmax-weighted
    average of the part's values, lse (..., T_q) the log-sum-exp of the part's scores. With
    lse = log(exp(lse_a) + exp(lse_b)):

        out = exp(lse_a - lse) * out_a + exp(lse_b - lse) * out_b        (..., T_q, d_v)

    This is the online softmax's update written for two whole states: in its running form (m, l, acc),
    m = max(m_a, m_b), l = l_a e^(m_a - m) + l_b e^(m_b - m), acc = acc_a e^(m_a - m) + acc_b e^(m_b - m),
    with out = acc / l and lse = m + log l. It is associative and commutative, so parts computed
    anywhere (chunks of a KV cache, devices of a ring) merge in any order or tree. A part that saw no
    key (out 0, lse -inf) is the identity. Returns (out in out_a's dtype, lse in float32 or wider).

    Taught inline in notebook 03 §11 (`merge`, on (m, l, acc)); the notebook asserts they agree."""
    _check_state("a", out_a, lse_a)
    _check_state("b", out_b, lse_b)
    if out_a.shape != out_b.shape or out_a.device != out_b.device:
        raise ValueError(f"the two states must describe the same queries: out_a {tuple(out_a.shape)} on "
                         f"{out_a.device}, out_b {tuple(out_b.shape)} on {out_b.device}; "
                         "split the keys, not the queries")
    work = _work_dtype(torch.promote_types(torch.promote_types(out_a.dtype, out_b.dtype),
                                           torch.promote_types(lse_a.dtype, lse_b.dtype)))
    lse_a, lse_b = lse_a.to(work), lse_b.to(work)
    lse = torch.logaddexp(lse_a, lse_b)  # (..., T_q)
    base = lse.masked_fill(lse.isneginf(), 0.0)  # both parts empty: weights exp(-inf) = 0, not NaN
    w_a, w_b = (lse_a - base).exp()[..., None], (lse_b - base).exp()[..., None]  # (..., T_q, 1), sum to 1
    return (w_a * out_a.to(work) + w_b * out_b.to(work)).to(out_a.dtype), lse


@torch.no_grad()
def flash_decoding(q, k, v, num_splits=4, is_causal=False, scale=None, causal_alignment="bottom_right",
                   return_lse=False):
    """Split-K attention for decoding (Flash-Decoding, Dao, Haziza, Massa & Sizov 2023), no autograd.

    q (B, H, T_q, d) holds one or a few new queries, k and v (B, H_kv, T_k, d) the KV cache (grouped
    heads as in flash_attention). A decoding step has too few queries to keep a GPU busy when the
    work is split over queries, so FlashDecoding splits the keys instead: the cache is cut into at
    most num_splits chunks of ceil(T_k / num_splits) positions, each chunk's attention is computed on
    its own (on a GPU by separate thread blocks, in parallel; here one after the other) with the tiled
    forward, giving one partial state (out, lse) per chunk, and merge_attention_states reduces them.

    is_causal defaults to False: a decoding query sees the whole cache. With is_causal=True
    (a block of T_q new tokens, each seeing the cache and the new tokens before it) the default
    alignment here is "bottom_right", decoding's convention (see flash_attention); "top_left" is
    accepted for symmetry. Returns out (B, H, T_q, d_v) in q's dtype, and lse (B, H, T_q) if return_lse.

    Taught inline in notebook 03 §11 (`split_k_decode`); the notebook asserts they agree."""
    scale, block_q, block_k = _check(q, k, v, scale, None, None, is_causal, causal_alignment)
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 1:
        raise ValueError(f"num_splits must be a positive integer (how many chunks the KV cache is cut into), "
                         f"got {num_splits!r}")
    T_k = k.shape[-2]
    offset = _causal_offset(is_causal, causal_alignment, q.shape[-2], T_k)
    chunk = -(-T_k // num_splits)
    parts = [_forward(q, k[:, :, s:s + chunk], v[:, :, s:s + chunk], scale, block_q, block_k,
                      None if offset is None else offset - s)  # the chunk's own diagonal: key s is its key 0
             for s in range(0, T_k, chunk)]  # independent of each other: any order, any worker
    out, lse = parts[0]
    for part in parts[1:]:
        out, lse = merge_attention_states(out, lse, *part)
    out = out.to(q.dtype)
    return (out, lse) if return_lse else out


# ---- a two-level memory: how many elements move between HBM and SRAM --------------------------

class TwoLevelMemory:
    """A GPU's memory in two levels: large, slow HBM holds the tensors; a fast SRAM holds
    at most `sram_size` elements, the tiles being worked on. `read` and `write` count the
    elements moved between them; `fits` checks that a working set fits in the SRAM."""

    def __init__(self, sram_size):
        _check_sram(sram_size)
        self.sram_size, self.reads, self.writes, self.peak_sram = sram_size, 0, 0, 0

    def read(self, hbm_tensor):
        """HBM -> SRAM: returns the tile, counts its elements."""
        if not isinstance(hbm_tensor, torch.Tensor):
            raise ValueError(f"read takes a torch.Tensor held in HBM, got {type(hbm_tensor).__name__}")
        self.reads += hbm_tensor.numel()
        return hbm_tensor.clone()

    def write(self, hbm_view, tile):
        """SRAM -> HBM: copies the tile into HBM, counts its elements."""
        if not isinstance(hbm_view, torch.Tensor) or not isinstance(tile, torch.Tensor):
            raise ValueError(f"write takes two torch.Tensors (the HBM view, the tile), "
                             f"got {type(hbm_view).__name__} and {type(tile).__name__}")
        if hbm_view.shape != tile.shape:
            raise ValueError(f"the tile {tuple(tile.shape)} must have the shape of the HBM view it is written to "
                             f"{tuple(hbm_view.shape)}; slice the view to the tile (e.g. out[i:i + len(tile)])")
        hbm_view.copy_(tile)
        self.writes += tile.numel()

    def fits(self, *tiles):
        """Check that tiles (tensors or element counts) held at once fit in the SRAM."""
        for t in tiles:
            if not isinstance(t, torch.Tensor) and (isinstance(t, bool) or not isinstance(t, numbers.Integral)
                                                    or t < 0):
                raise ValueError(f"fits takes tensors or non-negative integer element counts, got {t!r}")
        n = sum(t.numel() if isinstance(t, torch.Tensor) else int(t) for t in tiles)
        if n > self.sram_size:
            raise ValueError(f"a working set of {n} elements does not fit in an SRAM of {self.sram_size}; "
                             "use smaller tiles or a larger sram_size")
        self.peak_sram = max(self.peak_sram, n)

    @property
    def accesses(self):
        return self.reads + self.writes


def _check_single_head(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{name} must be one head, a (T, d) tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got {t.dtype}; convert with .float()")
    if q.shape[1] != k.shape[1] or k.shape[0] != v.shape[0]:
        raise ValueError(f"shapes do not match: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}; "
                         "q and k need the same d, k and v the same number of positions T_k")
    if min(q.shape[0], k.shape[0], q.shape[1], v.shape[1]) == 0:
        raise ValueError(f"attention needs at least one query, one key and d >= 1, got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; "
                         "convert them with .to(q.dtype)")


def standard_attention_io(q, k, v, sram_size):
    """Standard attention (Dao et al. 2022, Algorithm 0) on one (T, d) head in a TwoLevelMemory.

    1. S = Q K^T * scale, tile by tile, written to HBM;  2. P = softmax(S) row block by row
    block (read S twice: running max/sum, then normalise), written to HBM;  3. O = P V.
    Square b x b tiles, the largest with Q/P tile + K/V tile + S tile = 2bd + b^2 <= M.
    Returns (output, memory); memory.accesses is the HBM traffic in elements."""
    _check_single_head(q, k, v)
    _check_sram(sram_size)
    T, d = q.shape
    T_k, d_v = k.shape[0], v.shape[1]
    b = math.isqrt(max(d, d_v) ** 2 + sram_size) - max(d, d_v)
    if b < 1:
        raise ValueError(f"sram_size={sram_size} is too small for d={max(d, d_v)}: it needs at least {2 * max(d, d_v) + 1}")
    mem, scale = TwoLevelMemory(sram_size), 1.0 / math.sqrt(d)
    S, P, out = q.new_empty(T, T_k), q.new_empty(T, T_k), q.new_empty(T, d_v)  # all in HBM
    for i in range(0, T, b):
        Qi = mem.read(q[i:i + b])
        for j in range(0, T_k, b):
            Kj = mem.read(k[j:j + b])
            mem.fits(Qi, Kj, b * b)
            mem.write(S[i:i + b, j:j + b], Qi @ Kj.T * scale)
    for i in range(0, T, b):
        m = q.new_full((min(b, T - i), 1), -math.inf)
        l = q.new_zeros(m.shape)
        for j in range(0, T_k, b):  # pass 1: row max and sum, online
            Sij = mem.read(S[i:i + b, j:j + b])
            mem.fits(Sij, m, l)
            m_new = torch.maximum(m, Sij.amax(-1, keepdim=True))
            l = l * torch.exp(m - m_new) + torch.exp(Sij - m_new).sum(-1, keepdim=True)
            m = m_new
        for j in range(0, T_k, b):  # pass 2: normalise
            Sij = mem.read(S[i:i + b, j:j + b])
            mem.fits(Sij, m, l)
            mem.write(P[i:i + b, j:j + b], torch.exp(Sij - m) / l)
    for i in range(0, T, b):
        Oi = q.new_zeros(min(b, T - i), d_v)
        for j in range(0, T_k, b):
            Pij, Vj = mem.read(P[i:i + b, j:j + b]), mem.read(v[j:j + b])
            mem.fits(Pij, Vj, Oi)
            Oi += Pij @ Vj
        mem.write(out[i:i + b], Oi)
    return out, mem


def flash_block_sizes(d, sram_size):
    """(query block B_r, key block B_c) for an SRAM of M elements, in FlashAttention-2's loop order.

    Dao et al. 2022 (K/V loop outside) take outer blocks of M/4d rows and inner blocks of
    min(M/4d, d). Here the query loop is outside, so the roles swap: the inner key block is
    B_c = min(M/4d, d), and the outer query block is as large as the SRAM allows beside it:
    Q_i and O_i (2 B_r d), m_i and l_i (2 B_r), K_j and V_j (2 B_c d) and the score tile
    (B_r B_c) must fit in M. K and V are read once per query block, so the traffic is
    ~ 2 T^2 d / B_r = Theta(T^2 d^2 / M)."""
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise ValueError(f"d must be a positive integer (the head dimension), got {d!r}")
    _check_sram(sram_size)
    bc = min(sram_size // (4 * d), d)
    br = (sram_size - 2 * bc * d) // (2 * d + 2 + bc) if bc >= 1 else 0
    if br < 1:
        raise ValueError(f"sram_size={sram_size} is too small for d={d}: FlashAttention's tiles need at least "
                         f"{4 * d + 2 * d + 3} elements")
    return br, bc


def flash_attention_io(q, k, v, sram_size, block_q=None, block_k=None):
    """Tiled attention on one (T, d) head in a TwoLevelMemory: (output, memory).

    Each query block Q_i is read once; every K_j, V_j is read once per query block; only
    O_i and the log-sum-exp are written. No T x T matrix ever reaches HBM. The blocks default to
    flash_block_sizes(max(d, d_v), sram_size); given ones must fit (a ValueError says by how much they do not):
    the traffic is T d + ceil(T / B_r) T_k (d + d_v) + T d_v + T elements, whatever B_c (notebook 03's block explorer)."""
    _check_single_head(q, k, v)
    T, d = q.shape
    T_k, d_v = k.shape[0], v.shape[1]
    br, bc = flash_block_sizes(max(d, d_v), sram_size)
    br, bc = _check_block("block_q", block_q, br), _check_block("block_k", block_k, bc)
    mem, scale = TwoLevelMemory(sram_size), 1.0 / math.sqrt(d)
    out, lse = q.new_empty(T, d_v), q.new_empty(T, 1)  # in HBM
    for i in range(0, T, br):
        Qi = mem.read(q[i:i + br])
        m = q.new_full((Qi.shape[0], 1), -math.inf)
        l, acc = q.new_zeros(m.shape), q.new_zeros(Qi.shape[0], d_v)
        for j in range(0, T_k, bc):
            Kj, Vj = mem.read(k[j:j + bc]), mem.read(v[j:j + bc])
            S = Qi @ Kj.T * scale
            mem.fits(Qi, acc, m, l, Kj, Vj, S)
            m_new = torch.maximum(m, S.amax(-1, keepdim=True))
            P = torch.exp(S - m_new)
            alpha = torch.exp(m - m_new)
            l = l * alpha + P.sum(-1, keepdim=True)
            acc = acc * alpha + P @ Vj
            m = m_new
        mem.write(out[i:i + br], acc / l)
        mem.write(lse[i:i + br], m + l.log())
    return out, mem
