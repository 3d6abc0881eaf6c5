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
        O_i = acc / l                              normalise once, at the end
        L_i = m + log(l)                           log-sum-exp, saved for the backward

The backward recomputes each tile's probabilities from L (P = exp(S - L)) instead of
storing them, so training needs O(T) extra memory too.

Also here: a simulated two-level memory that counts the HBM traffic of standard and tiled
attention (`standard_attention_io`, `flash_attention_io`). The peak-memory measurement is
`course_lib.memory.peak_memory`.
"""
import math
import numbers

import torch

# Chosen for speed on a 2-core CPU with d = 64 (python -m course_lib.bench flash; notebook 03):
# a 256 x 512 float32 score tile is 512 KiB per head, which stays in a core's L2 cache.
DEFAULT_BLOCK_Q = 256
DEFAULT_BLOCK_K = 512


def online_softmax(x, block):
    """softmax(x) over the last dimension, reading x in chunks of `block` (Milakov & Gimelshein 2018).

    One pass keeps a running max m and a running sum l of exp(x - m); when a chunk raises
    the max, the sum so far is rescaled by exp(m_old - m_new). A second pass normalises."""
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


def _check(q, k, v, scale, block_q, block_k, is_causal=False):
    """Validate flash attention's inputs; return (scale, block_q, block_k)."""
    if not isinstance(is_causal, bool):
        raise ValueError(f"is_causal must be True or False, got {is_causal!r}")
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
    if not (q.shape[:2] == k.shape[:2] == v.shape[:2]):
        raise ValueError(f"q, k, v must have the same (batch, heads), got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}; repeat shared K/V heads (e.g. k.repeat_interleave) before calling")
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


def _key_end(is_causal, q_end, T_k):
    """Keys a query block [.., q_end) may see: causal is top-left aligned, as torch's is_causal."""
    return min(q_end, T_k) if is_causal else T_k


def _mask_tile(S, is_causal, qs, ks):
    """Set the scores of keys after their query to -inf in a tile that starts at (qs, ks)."""
    if is_causal and ks + S.shape[-1] - 1 > qs:  # the tile reaches above the diagonal
        rows = torch.arange(qs, qs + S.shape[-2], device=S.device)[:, None]
        cols = torch.arange(ks, ks + S.shape[-1], device=S.device)[None, :]
        S.masked_fill_(cols > rows, -math.inf)
    return S


@torch.no_grad()
def flash_attention_forward(q, k, v, is_causal=False, scale=None, block_q=None, block_k=None):
    """The tiled forward: (out (B, H, T_q, d_v), lse (B, H, T_q)), no autograd.

    lse is the log-sum-exp of each query's scaled scores, log sum_j exp(s_j): all the
    backward needs to rebuild any probability, p_j = exp(s_j - lse)."""
    scale, block_q, block_k = _check(q, k, v, scale, block_q, block_k, is_causal)
    B, H, T_q, _ = q.shape
    T_k, d_v = k.shape[-2], v.shape[-1]
    work = _work_dtype(q.dtype)
    q3, k3, v3 = _heads(q, work), _heads(k, work), _heads(v, work)
    out = torch.empty(B * H, T_q, d_v, dtype=work, device=q.device)
    lse = torch.empty(B * H, T_q, 1, dtype=work, device=q.device)
    for qs in range(0, T_q, block_q):
        qe = min(qs + block_q, T_q)
        Qi = q3[:, qs:qe] * scale  # (BH, bq, d)
        m = torch.full((B * H, qe - qs, 1), -math.inf, dtype=work, device=q.device)  # running max
        l = torch.zeros_like(m)  # running sum of exp(s - m)
        acc = torch.zeros(B * H, qe - qs, d_v, dtype=work, device=q.device)  # unnormalised output
        for ks in range(0, _key_end(is_causal, qe, T_k), block_k):
            ke = min(ks + block_k, _key_end(is_causal, qe, T_k))
            S = _mask_tile(torch.bmm(Qi, k3[:, ks:ke].mT), is_causal, qs, ks)  # (BH, bq, bk)
            m_new = torch.maximum(m, S.amax(-1, keepdim=True))
            P = S.sub_(m_new).exp_()  # in place: the tile's scores become its probabilities
            alpha = (m - m_new).exp_()  # rescales what was accumulated under the old max
            l.mul_(alpha).add_(P.sum(-1, keepdim=True))
            acc.mul_(alpha).baddbmm_(P, v3[:, ks:ke])
            m = m_new
        out[:, qs:qe] = acc.div_(l)
        lse[:, qs:qe] = m + l.log()
    return out.reshape(B, H, T_q, d_v).to(q.dtype), lse.reshape(B, H, T_q)


@torch.no_grad()
def flash_attention_backward(dout, q, k, v, out, lse, is_causal=False, scale=None, block_q=None, block_k=None):
    """Gradients (dq, dk, dv) of flash attention, recomputing each tile's probabilities from lse.

    With P = exp(S - lse), dP = dO V^T and D = rowsum(dO * O) (= rowsum(P * dP)):
    dV = P^T dO,  dS = P * (dP - D),  dQ = scale * dS K,  dK = scale * dS^T Q."""
    scale, block_q, block_k = _check(q, k, v, scale, block_q, block_k, is_causal)
    B, H, T_q, _ = q.shape
    T_k, d_v = k.shape[-2], v.shape[-1]
    for name, t in (("dout", dout), ("out", out), ("lse", lse)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor (out and lse from flash_attention_forward), "
                             f"got {type(t).__name__}")
    if tuple(dout.shape) != (B, H, T_q, d_v) or tuple(out.shape) != (B, H, T_q, d_v):
        raise ValueError(f"dout and out must have the output's shape {(B, H, T_q, d_v)}, "
                         f"got {tuple(dout.shape)} and {tuple(out.shape)}")
    if tuple(lse.shape) != (B, H, T_q):
        raise ValueError(f"lse must have shape {(B, H, T_q)} (from flash_attention_forward), got {tuple(lse.shape)}")
    work = _work_dtype(q.dtype)
    q3, k3, v3 = _heads(q, work), _heads(k, work), _heads(v, work)
    o3, do3 = _heads(out, work), _heads(dout, work)
    lse3 = lse.reshape(B * H, T_q, 1).to(work)
    D = (do3 * o3).sum(-1, keepdim=True)  # (BH, T_q, 1)
    dq, dk, dv = torch.zeros_like(q3), torch.zeros_like(k3), torch.zeros_like(v3)
    for qs in range(0, T_q, block_q):
        qe = min(qs + block_q, T_q)
        Qi, dOi, Li, Di = q3[:, qs:qe], do3[:, qs:qe], lse3[:, qs:qe], D[:, qs:qe]
        for ks in range(0, _key_end(is_causal, qe, T_k), block_k):
            ke = min(ks + block_k, _key_end(is_causal, qe, T_k))
            Kj, Vj = k3[:, ks:ke], v3[:, ks:ke]
            S = _mask_tile(torch.bmm(Qi, Kj.mT).mul_(scale), is_causal, qs, ks)
            P = S.sub_(Li).exp_()  # the tile's probabilities, recomputed
            dv[:, ks:ke].baddbmm_(P.mT, dOi)
            dS = torch.bmm(dOi, Vj.mT).sub_(Di).mul_(P)  # dP - D, times P
            dq[:, qs:qe].baddbmm_(dS, Kj, alpha=scale)
            dk[:, ks:ke].baddbmm_(dS.mT, Qi, alpha=scale)
    return tuple(g.reshape(t.shape).to(t.dtype) for g, t in ((dq, q), (dk, k), (dv, v)))


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd glue: the forward saves q, k, v, out and lse (O(T) memory), not the probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, is_causal, scale, block_q, block_k):
        out, lse = flash_attention_forward(q, k, v, is_causal, scale, block_q, block_k)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.options = (is_causal, scale, block_q, block_k)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = flash_attention_backward(dout, q, k, v, out, lse, *ctx.options)
        return dq, dk, dv, None, None, None, None


def flash_attention(q, k, v, is_causal=False, scale=None, block_q=None, block_k=None):
    """softmax(q k^T * scale) v, tiled, with a recomputing backward; the same numbers as
    torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale).

    q (B, H, T_q, d), k (B, H, T_k, d), v (B, H, T_k, d_v); any T_q, T_k (not only multiples
    of the blocks). is_causal masks keys after their query, top-left aligned like torch.
    scale defaults to 1/sqrt(d); block_q/block_k default to DEFAULT_BLOCK_Q/DEFAULT_BLOCK_K.
    float16/bfloat16 inputs are computed in float32 and returned in their own dtype."""
    _check(q, k, v, scale, block_q, block_k, is_causal)  # fail here, with the caller's names, not inside autograd
    return FlashAttentionFunction.apply(q, k, v, is_causal, scale, block_q, block_k)


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


def flash_attention_io(q, k, v, sram_size):
    """Tiled attention on one (T, d) head in a TwoLevelMemory: (output, memory).

    Each query block Q_i is read once; every K_j, V_j is read once per query block; only
    O_i and the log-sum-exp are written. No T x T matrix ever reaches HBM."""
    _check_single_head(q, k, v)
    T, d = q.shape
    T_k, d_v = k.shape[0], v.shape[1]
    br, bc = flash_block_sizes(max(d, d_v), sram_size)
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
