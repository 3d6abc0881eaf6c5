"""The KV cache: keep each layer's keys and values so decoding computes only the new token.

Without it, generating token t re-projects all t previous tokens in every layer; with
it, each step projects one token and attends to the stored keys and values.
The memory it costs is exactly ``kv_cache_bytes``.
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


def kv_cache_bytes(n_layers, n_kv_heads, d_head, seq_len, batch=1, dtype=torch.float16):
    """Bytes of a KV cache: 2 (K and V) * layers * KV heads * head dim * tokens * batch * bytes/element."""
    for name, value in (("n_layers", n_layers), ("n_kv_heads", n_kv_heads), ("d_head", d_head)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer (a model has at least one), got {value!r}")
    for name, value in (("seq_len", seq_len), ("batch", batch)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer (0 gives an empty cache), got {value!r}")
    b = 2 * n_layers * n_kv_heads * d_head * seq_len * batch * bytes_per_element(dtype)
    return int(b)


# Attention shapes of published models, from each model's config.json on the Hugging Face Hub
# (d_head = hidden size / attention heads). max_context is the trained context length.
PUBLISHED_CONFIGS = {
    "GPT-2 small": dict(n_layers=12, n_heads=12, n_kv_heads=12, d_head=64, max_context=1024),  # MHA
    "Llama-2-7B": dict(n_layers=32, n_heads=32, n_kv_heads=32, d_head=128, max_context=4096),  # MHA
    "Llama-2-70B": dict(n_layers=80, n_heads=64, n_kv_heads=8, d_head=128, max_context=4096),  # GQA-8
    "Llama-3-8B": dict(n_layers=32, n_heads=32, n_kv_heads=8, d_head=128, max_context=8192),  # GQA-8
    "Mistral-7B": dict(n_layers=32, n_heads=32, n_kv_heads=8, d_head=128, max_context=32768),  # GQA-8
    "Falcon-7B": dict(n_layers=32, n_heads=71, n_kv_heads=1, d_head=64, max_context=2048),  # MQA
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
    """Per-layer keys and values, each (B, n_kv_heads, T_so_far, d_head), grown as tokens arrive."""

    def __init__(self, n_layers):
        if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
        self.keys = [None] * n_layers
        self.values = [None] * n_layers

    def update(self, k, v, layer, cache_kwargs=None):
        """Append new k, v (B, Hkv, T_new, d_head) at `layer`; return all of that layer's k, v.

        The argument order is that of transformers' ``Cache.update``, so the course's attention
        works with either cache."""
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
            k = torch.cat([old_k, k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v

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
