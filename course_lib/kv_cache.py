"""The KV cache: keep each layer's keys and values so decoding computes only the new token.

Without it, generating token t re-projects all t previous tokens in every layer; with
it, each step projects one token and attends to the stored keys and values.
The memory it costs is exactly ``kv_cache_bytes``; three ways to pay less, also here:

- sliding-window attention with a rolling cache (Mistral 7B): ``RollingKVCache`` holds the last
  `window` positions, and ``kv_cache_bytes(..., window=W)`` stops growing at W tokens;
- multi-head latent attention (DeepSeek-V2): a compressed latent and one small RoPE key per token
  and layer are cached instead of K and V, ``mla_cache_bytes``;
- quantisation: 1 byte per element (int8, fp8) plus a scale per group, ``quantize_kv`` and
  ``kv_cache_bytes(..., dtype="int8", scale_group=g)``.
"""
import math
import numbers

import torch

_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "fp8": 1, "int4": 0.5}


def bytes_per_element(dtype):
    """Bytes per element for a torch dtype or a name such as 'float16', 'bfloat16', 'int8'."""
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    name = str(dtype).replace("torch.", "")
    if name not in _BYTES:
        raise ValueError(f"unknown dtype {dtype!r}; use a torch dtype or one of {sorted(_BYTES)}")
    return _BYTES[name]


def _check_count(name, value, minimum, why):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "a positive integer" if minimum == 1 else "a non-negative integer"
        raise ValueError(f"{name} must be {kind} ({why}), got {value!r}")


def kv_cache_bytes(n_layers, n_kv_heads, d_head, seq_len, batch=1, dtype=torch.float16, *, window=None,
                   scale_group=None, scale_dtype=torch.float16):
    """Bytes of a KV cache: 2 (K and V) * layers * KV heads * head dim * tokens * batch * bytes/element.

    window: sliding-window attention with a rolling cache (Jiang et al. 2023, Mistral 7B: 4096) holds
        only the last `window` positions, so tokens = min(seq_len, window); None (default) holds all.
    scale_group: for a quantised cache (dtype 'int8', 'fp8' or 'int4'), one scale of `scale_dtype` is
        stored per `scale_group` consecutive elements of each head vector (symmetric quantisation, no
        zero point; scale_group must divide d_head, d_head = one scale per token and head), adding
        bytes(scale_dtype) / scale_group bytes per element, as ``quantize_kv`` stores them.
        None (default) counts the elements only.
    With the defaults this is exactly the formula above; ``RollingKVCache.nbytes()`` and the tensors of
    ``quantize_kv`` hold exactly these bytes (the tests check both).
    The window and quantised forms are taught inline in notebook 02 §8 (the cache calculator); the notebook
    asserts they agree."""
    for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("d_head", d_head)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer (a model has at least one), got {value!r}")
    for name, value in (("seq_len", seq_len), ("batch", batch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer (0 gives an empty cache), got {value!r}")
    if window is not None:
        _check_count("window", window, 1, "the positions a sliding-window cache holds; None for full attention")
    per_element = bytes_per_element(dtype)
    scale_bytes = 0
    if scale_group is not None:
        _check_count("scale_group", scale_group, 1, "elements per quantisation scale; None counts no scales")
        if per_element > 1:
            raise ValueError(f"scale_group counts the scales of a quantised cache, but dtype={dtype!r} is "
                             f"{per_element} bytes per element; use dtype='int8', 'fp8' or 'int4', or drop scale_group")
        if d_head % scale_group:
            divisors = [g for g in range(1, d_head + 1) if d_head % g == 0]
            raise ValueError(f"scale_group={scale_group} must divide d_head={d_head} (groups run along each head "
                             f"vector); choose one of {divisors}")
        scale_bytes = bytes_per_element(scale_dtype)
    tokens = seq_len if window is None else min(seq_len, window)
    elements = 2 * n_layers * n_kv_heads * d_head * tokens * batch
    b = elements * per_element
    if scale_group is not None:  # one scale per group of scale_group elements (scale_group divides d_head)
        b += elements // scale_group * scale_bytes
    return int(b)


def mla_cache_bytes(n_layers, d_latent, d_rope, seq_len, batch=1, dtype=torch.float16):
    """Bytes of a multi-head latent attention cache (DeepSeek-AI 2024, DeepSeek-V2, §2.1):
    layers * (d_latent + d_rope) * tokens * batch * bytes/element.

    Per token and layer MLA caches the compressed latent c_KV (d_c = d_latent elements, 512 in
    DeepSeek-V2), from which every head's key and value are re-made by up-projections, and one
    decoupled RoPE key shared by all heads (d_h^R = d_rope, 64) — not 2 * heads * d_head.
    d_rope may be 0 (a latent without a decoupled RoPE key).
    Taught inline in notebook 02 §8 (the cache calculator); the notebook asserts they agree."""
    _check_count("n_layers", n_layers, 1, "a model has at least one")
    _check_count("d_latent", d_latent, 1, "the width of the cached latent c_KV, 512 in DeepSeek-V2")
    _check_count("d_rope", d_rope, 0, "the width of the decoupled RoPE key, 64 in DeepSeek-V2; 0 for none")
    _check_count("seq_len", seq_len, 0, "0 gives an empty cache")
    _check_count("batch", batch, 0, "0 gives an empty cache")
    return int(n_layers * (d_latent + d_rope) * seq_len * batch * bytes_per_element(dtype))


_QUANT_DTYPES = {"int8": torch.int8, "fp8": torch.float8_e4m3fn}
_QUANT_MAX = {"int8": 127.0, "fp8": torch.finfo(torch.float8_e4m3fn).max}  # largest value each code can hold


def quantize_kv(t, dtype="int8", group=None, scale_dtype=torch.float16):
    """Quantise cached keys or values t (..., d_head) to 1 byte per element, symmetric, per group.

    Each run of `group` consecutive elements of a head vector (default: the whole vector, d_head)
    shares one scale = max|x| / qmax (qmax = 127 for 'int8', 448 for 'fp8', i.e. float8 e4m3), stored
    in `scale_dtype`; the codes are round(x / scale) in int8, or x / scale cast to float8_e4m3fn.
    Returns (codes (..., d_head), scales (..., d_head // group)); their bytes are exactly
    ``kv_cache_bytes(..., dtype=dtype, scale_group=group, scale_dtype=scale_dtype)`` for a full cache.
    ``dequantize_kv`` undoes it, up to rounding."""
    if dtype not in _QUANT_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_QUANT_DTYPES)} (1 byte per element), got {dtype!r}")
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() < 1 or t.shape[-1] < 1:
        raise ValueError(f"t must be a floating tensor of cached keys or values (..., d_head), got "
                         f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    d = t.shape[-1]
    group = d if group is None else group
    _check_count("group", group, 1, "elements per scale; None = one scale per head vector")
    if d % group:
        raise ValueError(f"group={group} must divide the head dimension {d}; choose one of "
                         f"{[g for g in range(1, d + 1) if d % g == 0]}")
    if not isinstance(scale_dtype, torch.dtype) or not scale_dtype.is_floating_point:
        raise ValueError(f"scale_dtype must be a floating torch dtype such as torch.float16, got {scale_dtype!r}")
    x = t.float().unflatten(-1, (d // group, group))  # (..., groups, group)
    scale = (x.abs().amax(-1, keepdim=True) / _QUANT_MAX[dtype]).to(scale_dtype)
    safe = scale.float().clamp_min(torch.finfo(torch.float32).tiny)  # an all-zero group keeps scale 0, codes 0
    if dtype == "int8":
        codes = (x / safe).round().clamp(-127, 127).to(torch.int8)
    else:
        codes = (x / safe).clamp(-_QUANT_MAX[dtype], _QUANT_MAX[dtype]).to(_QUANT_DTYPES[dtype])
    return codes.flatten(-2), scale.squeeze(-1)


def dequantize_kv(codes, scales):
    """codes (..., d_head) and scales (..., d_head // group) from ``quantize_kv`` -> float32 (..., d_head)."""
    if not isinstance(codes, torch.Tensor) or not isinstance(scales, torch.Tensor) or codes.dim() < 1 \
            or scales.shape[:-1] != codes.shape[:-1] or scales.shape[-1] < 1 or codes.shape[-1] % scales.shape[-1]:
        raise ValueError("codes and scales must be the two tensors quantize_kv returned, (..., d_head) and "
                         f"(..., d_head // group); got {tuple(getattr(codes, 'shape', ()))} and "
                         f"{tuple(getattr(scales, 'shape', ()))}")
    groups = scales.shape[-1]
    x = codes.float().unflatten(-1, (groups, codes.shape[-1] // groups))
    return (x * scales.float()[..., None]).flatten(-2)


# Attention shapes of published models, from each model's config.json on the Hugging Face Hub
# (d_head = hidden size / attention heads). max_context is config.json's max_position_embeddings, the trained
# context for all but Mistral-7B: v0.1 (Jiang et al. 2023, Table 1) was trained with context_len 8192 and a
# sliding window of 4096, and its config's 32768 is a RoPE limit; the 32k context without a window is v0.2's.
PUBLISHED_CONFIGS = {
    "GPT-2 small": dict(n_layers=12, n_heads=12, n_kv_heads=12, d_head=64, max_context=1024),  # MHA
    "Llama-2-7B": dict(n_layers=32, n_heads=32, n_kv_heads=32, d_head=128, max_context=4096),  # MHA
    "Llama-2-70B": dict(n_layers=80, n_heads=64, n_kv_heads=8, d_head=128, max_context=4096),  # GQA-8
    "Llama-3-8B": dict(n_layers=32, n_heads=32, n_kv_heads=8, d_head=128, max_context=8192),  # GQA-8
    "Mistral-7B": dict(n_layers=32, n_heads=32, n_kv_heads=8, d_head=128, max_context=32768,
                       window=4096),  # GQA-8; v0.1: sliding window of 4096 (Jiang et al. 2023), rolling cache; v0.2: none
    "Falcon-7B": dict(n_layers=32, n_heads=71, n_kv_heads=1, d_head=64, max_context=2048),  # MQA
}

# Multi-head latent attention: DeepSeek-V2 (DeepSeek-AI 2024, §2.1 and §3.1; config.json: num_hidden_layers 60,
# num_attention_heads 128, qk_nope_head_dim = v_head_dim 128, kv_lora_rank 512, qk_rope_head_dim 64). Per token and
# layer it caches d_latent + d_rope = 576 elements, where MHA with its 128 heads of 128 would cache 32,768.
MLA_CONFIGS = {
    "DeepSeek-V2": dict(n_layers=60, n_heads=128, d_head=128, d_latent=512, d_rope=64, max_context=131072),
}


def human_bytes(n):
    """1536 -> '1.50 KiB' (binary units, as memory is sold to programs)."""
    if isinstance(n, bool) or not isinstance(n, numbers.Real) or not math.isfinite(n) or n < 0:
        raise ValueError(f"a byte count must be a finite non-negative number, got {n!r}"
                         + ("; convert a tensor with .item()" if isinstance(n, torch.Tensor) else ""))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024


class KVCache:
    """Per-layer keys and values, each (B, n_kv_heads, T_so_far, d_head), grown as tokens arrive.

    Taught inline in notebook 02 §2 (`update` and the position / causal-mask offset of `GPT.forward`, with the
    bug of forgetting the offset); the notebook measures the bytes it holds with `course_lib.memory.memory_held`."""

    def __init__(self, n_layers):
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
        self.keys = [None] * n_layers
        self.values = [None] * n_layers

    def update(self, k, v, layer, cache_kwargs=None):
        """Append new k, v (B, Hkv, T_new, d_head) at `layer`; return all of that layer's k, v.

        The argument order is that of transformers' ``Cache.update``, so the course's attention
        works with either cache."""
        self._check_new(k, v, layer)
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def _check_new(self, k, v, layer):
        """New keys and values must be (B, Hkv, T_new, d_head) tensors that fit what `layer` holds."""
        self._check_layer(layer)
        if not isinstance(k, torch.Tensor) or not isinstance(v, torch.Tensor):
            raise ValueError(f"k and v must be torch.Tensors, got {type(k).__name__} and {type(v).__name__}")
        if k.shape != v.shape or k.dim() != 4:
            raise ValueError(f"k and v must both be (B, n_kv_heads, T, d_head), got {tuple(k.shape)} and {tuple(v.shape)}")
        if k.dtype != v.dtype or k.device != v.device:
            raise ValueError(f"k and v must share one dtype and device, got {k.dtype} on {k.device} and "
                             f"{v.dtype} on {v.device}; convert v with .to(k)")
        old_k = self.keys[layer]
        if old_k is not None:
            if old_k.dtype != k.dtype or old_k.device != k.device:
                raise ValueError(f"new keys are {k.dtype} on {k.device} but the cache at layer {layer} holds "
                                 f"{old_k.dtype} on {old_k.device}; use a fresh KVCache after changing dtype/device")
            if old_k.shape[:2] != k.shape[:2] or old_k.shape[3] != k.shape[3]:
                raise ValueError(
                    f"new keys {tuple(k.shape)} do not fit the cached {tuple(old_k.shape)} at layer {layer}; "
                    "use a fresh KVCache for a new batch"
                )

    def _check_layer(self, layer):
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < len(self.keys):
            raise ValueError(f"layer {layer!r} is out of range: use an integer 0..{len(self.keys) - 1} "
                             f"for a cache of {len(self.keys)} layers")

    def get_seq_length(self, layer=0):
        """Number of cached positions (tokens) so far."""
        self._check_layer(layer)
        return 0 if self.keys[layer] is None else self.keys[layer].shape[2]

    def nbytes(self):
        """Bytes actually held by the cached key and value tensors."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)


class RollingKVCache(KVCache):
    """A sliding-window cache (Jiang et al. 2023, Mistral 7B, §2 "Rolling Buffer Cache"): at most `window`
    positions per layer. Once full, the key and value of position i overwrite slot i mod window, so the
    memory stops growing: ``nbytes() == kv_cache_bytes(..., window=window)`` at every step.

    Attention over the held keys is then exactly sliding-window attention for a query that may see its
    last `window` positions (itself included) — the slots are out of order, which attention does not
    mind (a softmax over a set), and positions live inside the keys (RoPE rotates each key before it is
    cached; learned positions are added to the input). Fill it with a prompt of at most `window` tokens,
    then one token per call; for inference (the slots are overwritten in place).
    `get_seq_length()` counts the tokens seen — the next token's position, as RoPE needs —
    and `n_held()` the positions held. For one attention layer (`course_lib.attention.MultiHeadAttention`
    with is_causal=True); the course's GPT builds a full causal mask and does not take it."""

    def __init__(self, n_layers, window):
        super().__init__(n_layers)
        _check_count("window", window, 1, "the positions each layer keeps, 4096 in Mistral 7B")
        self.window = window
        self.seen = [0] * n_layers

    def update(self, k, v, layer, cache_kwargs=None):
        """Add new k, v (B, Hkv, T_new, d_head) at `layer`; return the held k, v (B, Hkv, <= window, d_head)."""
        self._check_new(k, v, layer)
        held, T_new = self.n_held(layer), k.shape[2]
        if held + T_new <= self.window:  # still filling: append, as KVCache does
            self.seen[layer] += T_new
            return super().update(k, v, layer)
        if T_new != 1:
            raise ValueError(f"a rolling cache of window {self.window} holds {held} positions at layer {layer} and "
                             f"cannot take {T_new} at once; feed at most {self.window - held} now, "
                             "then one token per call")
        slot = self.seen[layer] % self.window  # the oldest position held
        self.keys[layer][:, :, slot] = k[:, :, 0]
        self.values[layer][:, :, slot] = v[:, :, 0]
        self.seen[layer] += 1
        return self.keys[layer], self.values[layer]

    def get_seq_length(self, layer=0):
        """Tokens seen so far at `layer` (the next token's position); at most `window` are held."""
        self._check_layer(layer)
        return self.seen[layer]

    def n_held(self, layer=0):
        """Positions held at `layer` (<= window)."""
        self._check_layer(layer)
        return 0 if self.keys[layer] is None else self.keys[layer].shape[2]
