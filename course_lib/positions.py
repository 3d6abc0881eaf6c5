"""Where a token is: sinusoidal position encodings and rotary position embeddings (RoPE).

Attention by itself is permutation-equivariant (shuffle the tokens and its outputs shuffle with
them), so a transformer must be told the order. Two ways, both here:

- **Sinusoidal encodings** (Vaswani et al. 2017, §3.5), *added* to the token embeddings:
      PE(pos, 2i) = sin(pos / 10000^(2i/d_model)),   PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)).
- **RoPE** (Su et al. 2021, RoFormer, §3.2.2), applied to the queries and keys of every layer: the
  pair of dimensions i of a vector at position m is rotated by the angle m·θ_i, with
      θ_i = base^(-2i/d),  i = 0 .. d/2 - 1,  base = 10000
  (the paper writes θ_i = 10000^(-2(i-1)/d) for i = 1 .. d/2). A rotation by m·θ then one by -n·θ
  is one by (m - n)·θ, so the score q_m·k_n depends on the positions only through m - n.

The rotation follows the Llama / Hugging Face convention (``rotate_half``): dimension i is paired
with dimension i + d/2, not with its neighbour as in the paper; the two differ only by a fixed
permutation of the head dimensions, which the learned W_q and W_k absorb. `apply_rope` gives the
same numbers as transformers' ``LlamaRotaryEmbedding`` + ``apply_rotary_pos_emb`` (the tests check it).

The ladder, bottom up (shapes in each docstring):
    rope_frequencies -> rope_angles -> rope_cos_sin -> rotate_half, apply_rotary -> apply_rope
Taught inline in notebook 01 §5 (positions); the notebook asserts they agree.
"""
import math
import numbers

import torch

ROPE_BASE = 10000.0  # RoFormer's and Llama's base


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_base(base):
    if isinstance(base, bool) or not isinstance(base, numbers.Real) or not math.isfinite(base) or base <= 1:
        raise ValueError(f"base must be a finite number > 1 (the papers use 10000; Llama 3 uses 500000), got {base!r}")
    return float(base)


def _check_even_dim(d, name, why):
    if not _is_int(d) or d < 2 or d % 2:
        raise ValueError(f"{name} must be an even positive integer, got {d!r}: {why}"
                         + (f"; use {d - 1} or {d + 1}" if _is_int(d) and d > 2 else ""))
    return d


def _check_positions(positions):
    """Integer positions (T,) or (B, T) as a tensor; lists and ranges are accepted."""
    if not isinstance(positions, torch.Tensor):
        try:
            positions = torch.as_tensor(list(positions) if isinstance(positions, range) else positions)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"positions must be integer position ids, a (T,) or (batch, T) tensor, got "
                             f"{type(positions).__name__}; use torch.arange(T)") from None
    if positions.is_floating_point() or positions.is_complex() or positions.dtype == torch.bool:
        raise ValueError(f"positions must hold integer position ids, got {positions.dtype}; use torch.arange(T) "
                         "or convert with .long()")
    if positions.dim() not in (1, 2) or positions.numel() == 0:
        raise ValueError(f"positions must be a non-empty (T,) or (batch, T) tensor of position ids, "
                         f"got shape {tuple(positions.shape)}")
    if int(positions.min()) < 0:
        raise ValueError(f"positions must be >= 0 (they count tokens from 0), got a minimum of {int(positions.min())}; "
                         "with left padding compute them from the attention mask: "
                         "(attention_mask.cumsum(-1) - 1).clamp_min(0)")
    return positions


def _table_dtype(dtype):
    """cos/sin are computed in float32 (as transformers does), or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def sinusoidal_positions(n_positions, d_model, base=ROPE_BASE, dtype=torch.float32):
    """The fixed position encodings of Vaswani et al. 2017, §3.5: a (n_positions, d_model) table.

        PE[pos, 2i]     = sin(pos / base^(2i / d_model))
        PE[pos, 2i + 1] = cos(pos / base^(2i / d_model))      i = 0 .. d_model/2 - 1

    Row `pos` is added to the embedding of the token at position pos.
    Taught inline in notebook 01 §5 (positions); the notebook asserts they agree."""
    if not _is_int(n_positions) or n_positions < 1:
        raise ValueError(f"n_positions must be a positive integer (the number of positions), got {n_positions!r}")
    d_model = _check_even_dim(d_model, "d_model", "the table interleaves sin and cos, a pair per frequency")
    base = _check_base(base)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype such as torch.float32, got {dtype!r}")
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (n_positions, 1)
    two_i = torch.arange(0, d_model, 2, dtype=torch.float64)  # (d_model/2,): 0, 2, 4, ...
    angle = pos / base ** (two_i / d_model)  # (n_positions, d_model/2)
    pe = torch.empty(n_positions, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)  # even dimensions
    pe[:, 1::2] = torch.cos(angle)  # odd dimensions
    return pe.to(dtype)


def rope_frequencies(d_head, base=ROPE_BASE, dtype=torch.float32):
    """θ_i = base^(-2i / d_head) for i = 0 .. d_head/2 - 1: a (d_head/2,) tensor, from 1 down to ~1/base.

    RoFormer §3.2.2: Θ = {θ_i = 10000^(-2(i-1)/d), i in [1, 2, ..., d/2]} (1-based there).
    Computed as transformers does, 1 / base^(arange(0, d, 2) / d), so the numbers are the same.
    Taught inline in notebook 01 §5 (positions); the notebook asserts they agree."""
    d_head = _check_even_dim(d_head, "d_head", "RoPE rotates pairs of dimensions")
    base = _check_base(base)
    return 1.0 / (base ** (torch.arange(0, d_head, 2, dtype=dtype) / d_head))


def rope_angles(positions, d_head, base=ROPE_BASE, dtype=torch.float32):
    """The rotation angles m·θ_i: positions (T,) or (B, T) -> (T, d_head/2) or (B, T, d_head/2)."""
    positions = _check_positions(positions)
    theta = rope_frequencies(d_head, base, dtype).to(positions.device)  # (d_head/2,)
    return positions.to(dtype)[..., None] * theta  # (..., T, d_head/2)


def rope_cos_sin(positions, d_head, base=ROPE_BASE, dtype=torch.float32):
    """cos and sin of the angles, each (..., T, d_head) with the half repeated: [cos(mθ), cos(mθ)].

    Dimension j and j + d_head/2 share angle j, as `rotate_half` pairs them (transformers' layout).
    Computed in float32 (float64 if dtype is float64) and returned in `dtype`."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype such as torch.float32, got {dtype!r}")
    angles = rope_angles(positions, d_head, base, _table_dtype(dtype))  # (..., T, d_head/2)
    emb = torch.cat([angles, angles], dim=-1)  # (..., T, d_head)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    """x (..., d) -> (..., d): [x1, x2] -> [-x2, x1], where x1, x2 are the two halves of the last dim.

    Multiplying by sin and adding x·cos rotates each pair (x1[j], x2[j]) by its angle:
        (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[-1] % 2:
        raise ValueError(f"x must be a tensor whose last dimension is even (pairs of dimensions are rotated), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    x1, x2 = x.chunk(2, dim=-1)  # each (..., d/2)
    return torch.cat([-x2, x1], dim=-1)


def apply_rotary(x, cos, sin):
    """Rotate x (..., T, d) by the angles whose cos and sin broadcast to it: x·cos + rotate_half(x)·sin."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor (..., T, d), got "
                         f"{x.dtype if isinstance(x, torch.Tensor) else type(x).__name__}")
    for name, t in (("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor) or t.shape[-1] != x.shape[-1]:
            raise ValueError(f"{name} must be a tensor whose last dimension is x's d={x.shape[-1]}, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}; "
                             "make them with rope_cos_sin(positions, d)")
    return x * cos + rotate_half(x) * sin


def apply_rope(q, k, positions, base=ROPE_BASE):
    """Rotate queries and keys by their positions (RoPE, Llama / transformers convention).

    q (..., T, d) and k (..., T, d) — for attention (B, n_heads, T, d) and (B, n_kv_heads, T, d) —
    positions (T,) shared by the batch, or (B, T) per sequence (left padding; decoding with a cache,
    where they continue from the cached length). Returns (q_rotated, k_rotated), shapes unchanged.
    Norms are unchanged, and q_m · k_n depends on m - n only.
    Taught inline in notebook 01 §5 (positions); the notebook asserts they agree."""
    for name, t in (("q", q), ("k", k)):
        if not isinstance(t, torch.Tensor) or t.dim() < 2 or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor of shape (..., T, d), got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if q.shape[-1] != k.shape[-1] or q.shape[-2] != k.shape[-2]:
        raise ValueError(f"q and k must have the same T and d (the last two dimensions), got q {tuple(q.shape)} "
                         f"and k {tuple(k.shape)}; for keys at other positions rotate each with apply_rotary")
    if q.dtype != k.dtype or q.device != k.device:
        raise ValueError(f"q and k must share one dtype and device, got {q.dtype} on {q.device} and "
                         f"{k.dtype} on {k.device}; convert k with .to(q)")
    _check_even_dim(q.shape[-1], "the head dimension d (the last dim of q and k)", "RoPE rotates pairs of dimensions")
    positions = _check_positions(positions).to(q.device)
    T = q.shape[-2]
    if positions.shape[-1] != T:
        raise ValueError(f"positions has {positions.shape[-1]} entries per sequence but q and k have T={T} "
                         f"positions; pass one position id per token, e.g. torch.arange(past, past + {T})")
    cos, sin = rope_cos_sin(positions, q.shape[-1], base, q.dtype)  # (T, d) or (B, T, d)
    if positions.dim() == 2:
        B = positions.shape[0]
        if q.dim() not in (3, 4) or k.dim() != q.dim() or (B != 1 and (q.shape[0] != B or k.shape[0] != B)):
            raise ValueError(f"(batch, T) positions of shape {tuple(positions.shape)} need q and k of shape "
                             f"(batch, T, d) or (batch, heads, T, d) with batch={B}, got q {tuple(q.shape)} "
                             f"and k {tuple(k.shape)}")
        if q.dim() == 4:
            cos, sin = cos[:, None], sin[:, None]  # (B, 1, T, d): the same angles for every head
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
