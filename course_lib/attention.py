"""Scaled dot-product attention and multi-head attention, from scratch.

    scores  = q @ k^T / sqrt(d)          (..., T_q, T_k)
    weights = softmax(scores + mask)     each row sums to 1
    output  = weights @ v                (..., T_q, d_v)

`scaled_dot_product_attention` gives the same numbers as
`torch.nn.functional.scaled_dot_product_attention` for the same arguments (the
tests check it), and can also return the attention weights, which torch's cannot.
`MultiHeadAttention` shares K/V heads across groups of query heads (MHA, GQA, MQA), optionally
rotates its queries and keys by their positions (RoPE, `course_lib.positions`), and
`convert_mha_to_gqa` turns a trained MHA model into a GQA one (Ainslie et al. 2023).
"""
import copy
import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F

from .positions import apply_rope


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_qkv(q, k, v):
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (..., T, d) with at least 2 dims, got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating tensor, got {t.dtype}; convert with .float()")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; convert them with .to(q.dtype)")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}; move them with .to(q.device)")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(
            f"q and k must have the same last dimension (d), got q {tuple(q.shape)} and k {tuple(k.shape)}"
        )
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(
            f"k and v must have the same number of positions T_k (dim -2), got k {tuple(k.shape)} and v {tuple(v.shape)}"
        )
    try:
        return torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"the batch dimensions of q {tuple(q.shape[:-2])}, k {tuple(k.shape[:-2])} and v {tuple(v.shape[:-2])} "
            "do not broadcast; give them the same leading (batch, head) dimensions"
        ) from None


def _mask_to_additive(attn_mask, q, batch, T_q, T_k):
    """A boolean (True = may attend) or additive float mask as an additive float mask."""
    if not isinstance(attn_mask, torch.Tensor):
        raise ValueError(f"attn_mask must be a torch.Tensor, got {type(attn_mask).__name__}")
    if attn_mask.device != q.device:
        raise ValueError(f"attn_mask is on {attn_mask.device} but q is on {q.device}; move it with .to(q.device)")
    try:
        torch.broadcast_shapes(attn_mask.shape, (*batch, T_q, T_k))
    except RuntimeError:
        raise ValueError(
            f"attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to the scores' shape "
            f"{(*batch, T_q, T_k)} (..., T_q, T_k)"
        ) from None
    if attn_mask.dtype == torch.bool:
        return torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device).masked_fill(~attn_mask, float("-inf"))
    if attn_mask.dtype != q.dtype:
        raise ValueError(
            f"a float attn_mask must have q's dtype {q.dtype}, got {attn_mask.dtype}; "
            "use a boolean mask (True = may attend) or convert it with .to(q.dtype)"
        )
    return attn_mask


def causal_mask(T_q, T_k=None, device=None, offset=0):
    """Boolean (T_q, T_k) mask, True where query i may attend to key j (j <= i + offset).

    offset=0 aligns it top-left like torch's ``is_causal=True``; when T_q new queries
    follow T_k - T_q cached keys (decoding with a KV cache) use offset = T_k - T_q."""
    T_k = T_q if T_k is None else T_k
    for name, value in (("T_q", T_q), ("T_k", T_k)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer (a number of positions), got {value!r}")
    if not _is_int(offset):
        raise ValueError(f"offset must be an integer (T_k - T_q when new queries follow cached keys), got {offset!r}")
    return torch.ones(T_q, T_k, dtype=torch.bool, device=device).tril(diagonal=offset)


def padding_mask(lengths, T):
    """Boolean (B, 1, 1, T) mask, True for the first ``lengths[b]`` (real) key positions."""
    if not _is_int(T) or T < 1:
        raise ValueError(f"T must be a positive integer (the padded length), got {T!r}")
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.numel() == 0 or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise ValueError(f"lengths must be a non-empty list of integer lengths, one per sequence, "
                         f"got {lengths.tolist()!r}")
    if bool((lengths < 1).any()) or bool((lengths > T).any()):
        raise ValueError(f"every length must be in 1..T={T} (a sequence has at least one real token and at most T), "
                         f"got {lengths.tolist()}; pad to T = the longest length")
    return (torch.arange(T, device=lengths.device)[None, :] < lengths[:, None])[:, None, None, :]


def scaled_dot_product_attention(
    q, k, v, attn_mask=None, is_causal=False, dropout_p=0.0, return_weights=False, scale=None
):
    """Attention: softmax(q k^T * scale + mask) v, with scale = 1/sqrt(d) by default.

    q (..., T_q, d), k (..., T_k, d), v (..., T_k, d_v); batch dimensions broadcast.
    attn_mask: boolean (True = may attend) or additive float, broadcastable to (..., T_q, T_k).
    A query row with no key it may attend to gets zero weights (and zero output), as in torch.
    Returns the output (..., T_q, d_v), or (output, weights) if return_weights.
    Taught inline in notebook 01 §1 (Queries, keys, values); the notebook checks both against torch's SDPA.
    """
    batch = _check_qkv(q, k, v)
    T_q, T_k, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if is_causal and attn_mask is not None:
        raise ValueError("pass either attn_mask or is_causal=True, not both (fold the causal mask into attn_mask)")
    if not isinstance(is_causal, bool):
        raise ValueError(f"is_causal must be True or False, got {is_causal!r}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be a number in [0, 1) (0 = no dropout), got {dropout_p!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, numbers.Real)
                              or not math.isfinite(scale)):
        raise ValueError(f"scale must be a finite number (default None = 1/sqrt(d)), got {scale!r}")
    scale = 1.0 / math.sqrt(d) if scale is None else scale

    scores = (q @ k.transpose(-2, -1)) * scale  # (..., T_q, T_k)
    if is_causal:
        attn_mask = causal_mask(T_q, T_k, device=q.device)
    if attn_mask is not None:
        scores = scores + _mask_to_additive(attn_mask, q, batch, T_q, T_k)
    blocked = torch.isneginf(scores).all(dim=-1, keepdim=True)  # rows with nothing to attend to
    if blocked.any():  # give them finite scores so neither softmax nor its gradient makes NaN, then zero them
        scores = scores.masked_fill(blocked, 0.0)
    weights = torch.softmax(scores, dim=-1)
    if blocked.any():
        weights = weights.masked_fill(blocked, 0.0)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = weights @ v  # (..., T_q, d_v)
    return (out, weights) if return_weights else out


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection, and grouped K/V heads.

    n_heads query heads of size d_head = d_model // n_heads run in parallel; their
    outputs are concatenated and mixed by an output projection. n_kv_heads key/value
    heads are shared by groups of n_heads // n_kv_heads query heads:
    n_kv_heads == n_heads is MHA, 1 is MQA, anything in between that divides n_heads is GQA.

    rope_theta=None (the default) leaves q and k as projected. A number (10000 in RoFormer and
    Llama 2) applies RoPE with that base: q and k are rotated by their positions before the KV
    cache stores k, so the cache holds rotated keys and a decoding step rotates only the new one.
    Taught inline in notebook 01 §4 (Multi-head attention); the notebook checks both against nn.MultiheadAttention.
    """

    def __init__(self, d_model, n_heads, n_kv_heads=None, dropout=0.0, bias=False, rope_theta=None):
        super().__init__()
        if not _is_int(d_model) or d_model < 1:
            raise ValueError(f"d_model must be a positive integer (the embedding width), got {d_model!r}")
        if not (_is_int(n_heads) and n_heads >= 1):
            raise ValueError(f"n_heads must be a positive integer, got {n_heads!r}")
        if d_model % n_heads != 0:
            divisors = [h for h in range(1, d_model + 1) if d_model % h == 0]
            raise ValueError(
                f"d_model={d_model} is not divisible by n_heads={n_heads}; "
                f"choose n_heads among the divisors of d_model: {divisors}"
            )
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if not (_is_int(n_kv_heads) and 1 <= n_kv_heads <= n_heads) or n_heads % n_kv_heads:
            raise ValueError(
                f"n_kv_heads={n_kv_heads!r} must divide n_heads={n_heads} (1 = MQA, n_heads = MHA); "
                f"choose one of {[h for h in range(1, n_heads + 1) if n_heads % h == 0]}"
            )
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be a number in [0, 1) (0 = no dropout), got {dropout!r}")
        if rope_theta is not None:
            if isinstance(rope_theta, bool) or not isinstance(rope_theta, numbers.Real) \
                    or not math.isfinite(rope_theta) or rope_theta <= 1:
                raise ValueError(f"rope_theta must be None (no RoPE) or a finite base > 1 such as 10000.0, "
                                 f"got {rope_theta!r}")
            if (d_model // n_heads) % 2:
                even = [h for h in range(1, d_model + 1) if d_model % h == 0 and (d_model // h) % 2 == 0]
                raise ValueError(f"RoPE rotates pairs of dimensions, so the head dimension d_model // n_heads must "
                                 f"be even, got {d_model} // {n_heads} = {d_model // n_heads}; "
                                 f"choose n_heads among {even}")
        self.d_model, self.n_heads, self.n_kv_heads = d_model, n_heads, n_kv_heads
        self.rope_theta = None if rope_theta is None else float(rope_theta)
        self.d_head = d_model // n_heads
        self.group = n_heads // n_kv_heads  # query heads per K/V head
        self.dropout = dropout
        # fused W_q, W_k, W_v: n_heads query heads, n_kv_heads key and value heads
        self.qkv = nn.Linear(d_model, (n_heads + 2 * n_kv_heads) * self.d_head, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)  # W_o

    def forward(self, x, attn_mask=None, is_causal=False, return_weights=False, cache=None, layer=0,
                position_ids=None):
        """x (B, T, d_model) -> (B, T, d_model) [, weights (B, n_heads, T, T_k)].

        attn_mask broadcasts to (B, n_heads, T, T_k). With a `course_lib.kv_cache.KVCache`,
        the new keys/values are appended to `cache` at index `layer` and the queries
        attend to every cached position (T_k = past + T).
        position_ids (T,) or (B, T), for RoPE only: the positions of the new tokens (default
        past .. past + T - 1); pass them per sequence with left padding."""
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be a tensor of shape (batch, T, d_model={self.d_model}), got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if not isinstance(is_causal, bool):
            raise ValueError(f"is_causal must be True or False, got {is_causal!r}")
        B, T, _ = x.shape
        H, Hkv, G, dh = self.n_heads, self.n_kv_heads, self.group, self.d_head
        q, k, v = self.qkv(x).split([H * dh, Hkv * dh, Hkv * dh], dim=-1)
        q = q.view(B, T, H, dh).transpose(1, 2)  # (B, H, T, dh)
        k = k.view(B, T, Hkv, dh).transpose(1, 2)  # (B, Hkv, T, dh)
        v = v.view(B, T, Hkv, dh).transpose(1, 2)  # (B, Hkv, T, dh)
        if self.rope_theta is not None:  # rotate q and k by their positions *before* caching k
            if position_ids is None:
                past = cache.get_seq_length(layer) if cache is not None else 0
                position_ids = torch.arange(past, past + T, device=x.device)  # (T,)
            q, k = apply_rope(q, k, position_ids, self.rope_theta)  # shapes unchanged
        elif position_ids is not None:
            raise ValueError("position_ids are used by RoPE only, and this layer has rope_theta=None; "
                             "add learned or sinusoidal positions to x instead, or build it with rope_theta=10000.0")
        if cache is not None:
            k, v = cache.update(k, v, layer)  # (B, Hkv, T_k, dh), T_k = past + T
        T_k = k.shape[-2]
        if is_causal:
            if attn_mask is not None:
                raise ValueError("pass either attn_mask or is_causal=True, not both")
            attn_mask = causal_mask(T, T_k, device=x.device, offset=T_k - T)
        # group the query heads: (B, Hkv, G, T, dh); K/V (B, Hkv, 1, T_k, dh) broadcast over
        # the G query heads of their group, so nothing is copied.
        q = q.view(B, Hkv, G, T, dh)
        k, v = k.unsqueeze(2), v.unsqueeze(2)
        if attn_mask is not None:
            attn_mask = self._group_mask(attn_mask)
        y, w = scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0, return_weights=True,
        )  # y (B, Hkv, G, T, dh)
        y = y.reshape(B, H, T, dh).transpose(1, 2).reshape(B, T, self.d_model)  # concatenate heads
        y = self.out(y)
        return (y, w.reshape(B, H, T, T_k)) if return_weights else y

    def _group_mask(self, mask):
        """A mask broadcastable to (B, H, T, T_k) -> broadcastable to (B, Hkv, G, T, T_k)."""
        if not isinstance(mask, torch.Tensor) or mask.dim() > 4:
            raise ValueError("attn_mask must be a tensor broadcastable to (batch, n_heads, T, T_k)")
        mask = mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))
        if mask.shape[1] == 1:
            return mask.unsqueeze(2)
        if mask.shape[1] != self.n_heads:
            raise ValueError(
                f"attn_mask's head dimension is {mask.shape[1]}; it must be 1 or n_heads={self.n_heads}"
            )
        return mask.unflatten(1, (self.n_kv_heads, self.group))


_CONVERSIONS = ("mean", "first", "random")


def _pool_kv_heads(attn, n_kv_heads, method, generator):
    """A new MultiHeadAttention with `attn`'s weights and its K/V heads pooled to n_kv_heads."""
    H, old, dh, d = attn.n_heads, attn.n_kv_heads, attn.d_head, attn.d_model
    r = old // n_kv_heads  # consecutive old K/V heads that become one new head
    w, b = attn.qkv.weight, attn.qkv.bias
    new = MultiHeadAttention(d, H, n_kv_heads, dropout=attn.dropout, bias=b is not None, rope_theta=attn.rope_theta)
    new = new.to(device=w.device, dtype=w.dtype).train(attn.training)

    def pool(t, is_bias=False):  # (old * dh, ...) -> (n_kv_heads * dh, ...)
        heads = t.reshape(n_kv_heads, r, dh, *t.shape[1:])
        if method == "mean":
            out = heads.mean(1)
        elif method == "first":
            out = heads[:, 0]
        elif is_bias:  # random: biases start at zero
            out = torch.zeros_like(heads[:, 0])
        else:  # random: a fresh draw at the scale of the weights it replaces
            out = torch.randn(heads[:, 0].shape, generator=generator, dtype=t.dtype, device=t.device) * t.std()
        return out.reshape(n_kv_heads * dh, *t.shape[1:])

    with torch.no_grad():
        for old_t, new_t, is_bias in ((w, new.qkv.weight, False), (b, new.qkv.bias, True)):
            if old_t is None:
                continue
            q, k, v = old_t.split([H * dh, old * dh, old * dh], dim=0)
            new_t.copy_(torch.cat([q, pool(k, is_bias), pool(v, is_bias)], dim=0))
        new.out.load_state_dict(attn.out.state_dict())
    return new


def convert_mha_to_gqa(module, n_kv_heads, method="mean", generator=None):
    """A copy of `module` whose attention layers share n_kv_heads K/V heads (Ainslie et al. 2023, §2.1).

    Query head h reads K/V head h // (n_heads // n_kv_heads), so each new K/V head serves a run of
    consecutive query heads and is made from the K/V heads that served them:
      "mean"   mean-pool their K and V projections (the paper's choice),
      "first"  keep the first head of each group,
      "random" re-initialise the K and V projections (normal, at the std of the weights replaced;
               biases zero), using `generator` (a torch.Generator) if given.
    Query and output projections are copied unchanged. `module` is a MultiHeadAttention or any
    module containing some (such as `course_lib.model.GPT`, whose config.n_kv_heads is updated);
    it is left untouched. n_kv_heads must divide each layer's current number of K/V heads.
    Taught inline in notebook 02 §7 (GQA from an MHA checkpoint); the notebook asserts they agree (mean-pooling)."""
    if method not in _CONVERSIONS:
        raise ValueError(f"method must be one of {_CONVERSIONS}, got {method!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    layers = [module] if isinstance(module, MultiHeadAttention) else [
        m for m in module.modules() if isinstance(m, MultiHeadAttention)]
    if not layers:
        raise ValueError(f"{type(module).__name__} contains no course_lib MultiHeadAttention to convert")
    for attn in layers:
        if not (_is_int(n_kv_heads) and 1 <= n_kv_heads <= attn.n_kv_heads) or attn.n_kv_heads % n_kv_heads:
            choices = [h for h in range(1, attn.n_kv_heads + 1) if attn.n_kv_heads % h == 0]
            raise ValueError(f"n_kv_heads={n_kv_heads!r} must divide the layer's {attn.n_kv_heads} K/V heads "
                             f"(1 = MQA); choose one of {choices}")
    if isinstance(module, MultiHeadAttention):
        return _pool_kv_heads(module, n_kv_heads, method, generator)
    converted = copy.deepcopy(module)
    for parent in list(converted.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MultiHeadAttention):
                setattr(parent, name, _pool_kv_heads(child, n_kv_heads, method, generator))
    config = getattr(converted, "config", None)
    if config is not None and hasattr(config, "n_kv_heads"):
        config.n_kv_heads = n_kv_heads
    return converted
