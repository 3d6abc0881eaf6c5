"""A small GPT in nanoGPT's spirit, packaged as a Hugging Face causal LM.

    tokens -> token + position embeddings -> n_layer x [x + attn(ln(x)); x + mlp(ln(x))] -> ln -> logits

Attention is `course_lib.attention.MultiHeadAttention` (grouped K/V heads when
n_kv_heads < n_head). Positions are a learned table added to the token embeddings (GPT-2's
`wpe`, the default), or with position_embedding="rope" rotary embeddings applied to q and k in
every layer (Llama's way; no `wpe` table). The model works with `generate()`, `save_pretrained()` /
`from_pretrained()` (safetensors) and `AutoModelForCausalLM` (registered on import).
`GPTForSequenceClassification` is the same GPT with a scalar head on the last real token, registered with
`AutoModelForSequenceClassification`: what TRL's `RewardTrainer` trains (notebook 11).
`generate_tokens` is the course's own short decoding loop (greedy or sampled, KV cache or not).
"""
import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, GenerationMixin,
                          PretrainedConfig, PreTrainedModel)
from transformers.modeling_outputs import CausalLMOutputWithPast, SequenceClassifierOutput

from .attention import MultiHeadAttention, causal_mask
from .kv_cache import KVCache


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _divisors(n):
    """'1, 2 or 4': the divisors of n, for an error message."""
    ds = [str(h) for h in range(1, n + 1) if n % h == 0]
    return ds[0] if len(ds) == 1 else ", ".join(ds[:-1]) + " or " + ds[-1]


def _is_token_id(value):
    if isinstance(value, torch.Tensor):
        return value.dim() == 0 and not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)
    return _is_int(value)


def _token_id_list(value):
    """One token id or a non-empty list (tuple, set, 1-D tensor) of them, as a list of ints; None if neither."""
    if _is_token_id(value):
        return [int(value)]
    if isinstance(value, (list, tuple, set)) or isinstance(value, torch.Tensor) and value.dim() == 1:
        ids = list(value)
        if ids and all(_is_token_id(i) for i in ids):
            return [int(i) for i in ids]
    return None


POSITION_EMBEDDINGS = ("learned", "rope")


def _check_config(vocab_size, n_positions, n_embd, n_layer, n_head, n_kv_heads, n_inner, dropout,
                  layer_norm_epsilon, initializer_range, token_ids, position_embedding="learned", rope_theta=10000.0):
    for name, value in (("vocab_size", vocab_size), ("n_positions", n_positions), ("n_embd", n_embd),
                        ("n_layer", n_layer), ("n_head", n_head), ("n_kv_heads", n_kv_heads), ("n_inner", n_inner)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if n_embd % n_head:
        raise ValueError(f"n_head must divide n_embd (got n_embd={n_embd}, n_head={n_head}): "
                         f"choose a divisor such as {_divisors(n_embd)}")
    if n_head % n_kv_heads:
        raise ValueError(f"n_kv_heads must divide n_head (got n_head={n_head}, n_kv_heads={n_kv_heads}): "
                         f"choose a divisor such as {_divisors(n_head)} (1 = MQA, n_head = MHA)")
    if not _is_real(dropout) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be a number in [0, 1) (0 = no dropout), got {dropout!r}")
    if not _is_real(layer_norm_epsilon) or layer_norm_epsilon <= 0:
        raise ValueError(f"layer_norm_epsilon must be a small positive number such as 1e-5, got {layer_norm_epsilon!r}")
    if not _is_real(initializer_range) or initializer_range < 0:
        raise ValueError(f"initializer_range must be a non-negative number (the init std, e.g. 0.02), "
                         f"got {initializer_range!r}")
    if position_embedding not in POSITION_EMBEDDINGS:
        raise ValueError(f"position_embedding must be 'learned' (a trained table added to the embeddings, as GPT-2) "
                         f"or 'rope' (q and k rotated by their positions, as Llama), got {position_embedding!r}")
    if not _is_real(rope_theta) or rope_theta <= 1:
        raise ValueError(f"rope_theta must be a finite number > 1 (RoPE's base; 10000.0 in RoFormer and Llama 2), "
                         f"got {rope_theta!r}")
    if position_embedding == "rope" and (n_embd // n_head) % 2:
        even = [str(h) for h in range(1, n_embd + 1) if n_embd % h == 0 and (n_embd // h) % 2 == 0]
        raise ValueError(f"RoPE rotates pairs of dimensions, so the head dimension n_embd // n_head must be even, "
                         f"got {n_embd} // {n_head} = {n_embd // n_head}: choose n_head among {', '.join(even)}")
    for name, value in token_ids.items():
        if value is None:
            continue
        ids = _token_id_list(value) if name == "eos_token_id" else [int(value)] if _is_token_id(value) else None
        if ids is None or not all(0 <= i < vocab_size for i in ids):
            raise ValueError(f"{name} must be None or a token id in 0..vocab_size-1={vocab_size - 1}"
                             f"{' (or a list of them)' if name == 'eos_token_id' else ''}, got {value!r}")


class GPTConfig(PretrainedConfig):
    """Field names follow GPT-2's config; n_kv_heads (default n_head) selects MHA / GQA / MQA.

    position_embedding: "learned" (default: a wpe table, as GPT-2) or "rope" (rotary embeddings
    of base rope_theta on q and k, as Llama; no wpe table). rope_theta is ignored with "learned"."""

    model_type = "course_gpt"
    auto_map = {}  # no remote code: TRL looks a class transformers does not ship up here, else takes AutoModelForCausalLM
    attribute_map = {"hidden_size": "n_embd", "max_position_embeddings": "n_positions",
                     "num_attention_heads": "n_head", "num_hidden_layers": "n_layer",
                     "num_key_value_heads": "n_kv_heads"}

    def __init__(self, vocab_size=256, n_positions=64, n_embd=128, n_layer=4, n_head=4, n_kv_heads=None,
                 n_inner=None, dropout=0.0, layer_norm_epsilon=1e-5, initializer_range=0.02,
                 bos_token_id=None, eos_token_id=None, pad_token_id=None, tie_word_embeddings=True,
                 position_embedding="learned", rope_theta=10000.0, **kwargs):
        n_kv_heads = n_head if n_kv_heads is None else n_kv_heads
        n_inner = 4 * n_embd if n_inner is None and _is_int(n_embd) else n_inner
        _check_config(vocab_size, n_positions, n_embd, n_layer, n_head, n_kv_heads, n_inner, dropout,
                      layer_norm_epsilon, initializer_range,
                      {"bos_token_id": bos_token_id, "eos_token_id": eos_token_id, "pad_token_id": pad_token_id},
                      position_embedding, rope_theta)
        self.vocab_size, self.n_positions, self.n_embd = vocab_size, n_positions, n_embd
        self.n_layer, self.n_head = n_layer, n_head
        self.n_kv_heads, self.n_inner = n_kv_heads, n_inner
        self.dropout, self.layer_norm_epsilon, self.initializer_range = dropout, layer_norm_epsilon, initializer_range
        self.position_embedding, self.rope_theta = position_embedding, float(rope_theta)
        super().__init__(bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                         tie_word_embeddings=tie_word_embeddings, **kwargs)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        rope_theta = cfg.rope_theta if cfg.position_embedding == "rope" else None
        self.attn = MultiHeadAttention(cfg.n_embd, cfg.n_head, cfg.n_kv_heads, dropout=cfg.dropout,
                                       rope_theta=rope_theta)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, cfg.n_inner), nn.GELU(), nn.Linear(cfg.n_inner, cfg.n_embd),
                                 nn.Dropout(cfg.dropout))

    def forward(self, x, mask, cache=None, layer=0, return_weights=False, position_ids=None):
        a, w = self.attn(self.ln_1(x), attn_mask=mask, cache=cache, layer=layer, return_weights=True,
                         position_ids=position_ids)
        x = x + a
        x = x + self.mlp(self.ln_2(x))
        return x, (w if return_weights else None)


@dataclass
class GPTOutput(CausalLMOutputWithPast):
    """A causal LM's output plus the final hidden state. The GPT is its own base model (nanoGPT's flat layout: no
    separate trunk module, so `model.base_model` is the model itself), and so it also returns what a trunk returns.
    TRL's fused LM head calls `model.base_model(...)` and reads `.last_hidden_state` (trl/trainer/utils.py,
    add_fused_lm_head), which is how TRL's trainers run on the course's GPT (notebook 11)."""

    last_hidden_state: torch.FloatTensor = None  # (B, T, n_embd), after the final LayerNorm


class GPT(PreTrainedModel, GenerationMixin):
    config_class = GPTConfig
    base_model_prefix = "gpt"
    main_input_name = "input_ids"
    _tied_weights_keys = {"lm_head.weight": "wte.weight"}
    _supports_cache_class = True

    def __init__(self, config):
        if not isinstance(config, GPTConfig):
            raise ValueError(f"config must be a course_lib.model.GPTConfig, got {type(config).__name__}; "
                             "load a saved model with GPT.from_pretrained(folder)")
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings
        if config.position_embedding == "learned":
            self.wpe = nn.Embedding(config.n_positions, config.n_embd)  # learned positions
        else:  # RoPE: positions enter as rotations of q and k inside every attention layer
            self.wpe = None
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # tied to wte
        self.post_init()

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def get_input_embeddings(self):
        return self.wte

    def set_input_embeddings(self, value):
        self.wte = value

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids=None, cache=None, attention_mask=None, position_ids=None, labels=None,
                use_cache=None, output_attentions=False, output_hidden_states=False, return_dict=None,
                past_key_values=None, **kwargs):
        """input_ids (B, T) -> logits (B, T, vocab). attention_mask (B, past + T): 1 = real token, 0 = padding.

        With `cache` (a `KVCache` or a transformers `Cache`), only the new tokens are passed: they are tokens
        past .. past + T - 1 (past = the cached length), so their positions are arange(past, past + T) and the
        causal mask is shifted, causal_mask(T, past + T, offset=past). Taught inline in notebook 02 §2, which
        also shows what forgetting either offset does."""
        cache = past_key_values if cache is None else cache
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a (batch, T) tensor of token ids, got "
                             f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else input_ids!r}")
        _check_token_ids(input_ids, self.config.vocab_size)
        B, T = input_ids.shape
        if labels is not None and (not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape):
            raise ValueError(f"labels must be a tensor of input_ids' shape {tuple(input_ids.shape)} (-100 = not "
                             f"predicted), got {tuple(labels.shape) if isinstance(labels, torch.Tensor) else labels!r}")
        if use_cache and cache is None:
            cache = KVCache(self.config.n_layer)
        past = cache.get_seq_length() if cache is not None else 0
        if past + T > self.config.n_positions:
            raise ValueError(f"sequence of {past + T} tokens is longer than the model's n_positions="
                             f"{self.config.n_positions}; truncate the input or generate fewer tokens")
        if position_ids is None:
            if attention_mask is not None:  # left padding: count real tokens only
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp_min(0)[:, -T:]
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device)[None]
        mask = causal_mask(T, past + T, device=input_ids.device, offset=past)[None, None]  # (1, 1, T, T_k)
        if attention_mask is not None:
            if attention_mask.shape != (B, past + T):
                raise ValueError(f"attention_mask must be (batch, past + T) = {(B, past + T)}, "
                                 f"got {tuple(attention_mask.shape)}")
            mask = mask & attention_mask.bool()[:, None, None, :]  # (B, 1, T, T_k)

        rope = self.wpe is None
        if rope:  # positions are rotations of q and k in each layer, before the cache stores k
            x = self.drop(self.wte(input_ids))  # (B, T, n_embd)
        else:
            x = self.drop(self.wte(input_ids) + self.wpe(position_ids))  # (B, T, n_embd)
        attentions, hidden = [], [x]
        for i, block in enumerate(self.h):
            x, w = block(x, mask, cache=cache, layer=i, return_weights=output_attentions,
                         position_ids=position_ids if rope else None)
            attentions.append(w)
            hidden.append(x)
        x = self.ln_f(x)
        hidden[-1] = x  # as in GPT-2: the last hidden state is after the final LayerNorm
        logits = self.lm_head(x)  # (B, T, vocab)

        loss = None
        if labels is not None:  # next-token prediction: position t predicts labels[t + 1]
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                   ignore_index=-100)
        return GPTOutput(loss=loss, logits=logits, cache=cache if use_cache or past else None,
                         attentions=tuple(attentions) if output_attentions else None,
                         hidden_states=tuple(hidden) if output_hidden_states else None, last_hidden_state=x)


class GPTForSequenceClassification(GPT):
    """The GPT with a linear head on the final hidden state of each sequence's last real token: (B, num_labels)
    scores. With num_labels=1 it is a reward model in Hugging Face's form (GPT-2's GPT2ForSequenceClassification),
    what TRL's RewardTrainer trains; course_lib.reward_model.RewardModel is the course's own, read the same way.
    The LM head stays, tied to the embeddings (no extra weights), so a causal-LM folder loads with only `score` new."""

    def __init__(self, config):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.score = nn.Linear(config.n_embd, config.num_labels, bias=False)
        self._init_weights(self.score)

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        """input_ids (B, T), attention_mask (B, T) (1 = real token; either padding side) -> logits (B, num_labels).
        labels: (B,) targets, a mean squared error with num_labels=1 (regression), else class ids (cross-entropy)."""
        for key in ("cache", "past_key_values", "use_cache"):
            kwargs.pop(key, None)
        h = super().forward(input_ids, attention_mask=attention_mask, **kwargs).last_hidden_state  # (B, T, n_embd)
        B, T = input_ids.shape
        if attention_mask is not None:
            real = attention_mask.bool()
        elif self.config.pad_token_id is not None:
            real = input_ids != self.config.pad_token_id
        else:
            real = torch.ones_like(input_ids, dtype=torch.bool)
        last = (torch.arange(T, device=input_ids.device) * real).argmax(-1)  # (B,) index of the last real token
        logits = self.score(h[torch.arange(B, device=h.device), last])  # (B, num_labels)
        loss = None
        if labels is not None:
            loss = (F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype)) if self.num_labels == 1
                    else F.cross_entropy(logits, labels))
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _check_token_ids(input_ids, vocab_size):
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got {input_ids.dtype}; convert with .long()")
    if input_ids.numel() == 0:
        raise ValueError(f"input_ids must hold at least one sequence of at least one token, "
                         f"got shape {tuple(input_ids.shape)}")
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"token ids must be in 0..vocab_size-1={vocab_size - 1}, got ids from {lo} to {hi}; "
                         "encode with the model's own tokenizer")


AutoConfig.register(GPTConfig.model_type, GPTConfig, exist_ok=True)
AutoModelForCausalLM.register(GPTConfig, GPT, exist_ok=True)
AutoModelForSequenceClassification.register(GPTConfig, GPTForSequenceClassification, exist_ok=True)


def max_positions(config):
    """The longest sequence a causal LM config allows (GPT-2 style or Llama style field names)."""
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None) or 10**9


@torch.no_grad()
def generate_tokens(model, input_ids, max_new_tokens, use_cache=True, temperature=0.0, eos_token_id=None,
                    attention_mask=None, generator=None):
    """Decode up to max_new_tokens after input_ids (B, T). temperature 0 = greedy, else sampling.

    With use_cache each step feeds only the newest token and reads the rest from the KV cache
    (the model's own cache object, so any transformers causal LM works); without it each step
    re-runs the whole sequence. Left padding is fine: pass attention_mask (1 = real token).
    eos_token_id may be one id or a list of stop ids; a finished sequence is padded with the
    first. Returns (B, T + new) token ids.
    Taught inline in notebook 02 §2 (The KV cache, and the bytes it holds); the notebook asserts they agree in §4."""
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if not _is_real(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy, 1 = the model's own "
                         f"distribution), got {temperature!r}")
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a (batch, T) tensor of token ids with T >= 1, got "
                         f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else input_ids!r}; "
                         "add a batch dimension with ids[None]")
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor)
                                       or attention_mask.shape != input_ids.shape):
        raise ValueError(f"attention_mask must have input_ids' shape {tuple(input_ids.shape)} (1 = real token, "
                         f"0 = padding), got {tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else attention_mask!r}")
    if eos_token_id is not None and _token_id_list(eos_token_id) is None:
        raise ValueError(f"eos_token_id must be None, a token id or a non-empty list of token ids, got {eos_token_id!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    was_training = model.training
    model.eval()
    ids = input_ids
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    stops = None if eos_token_id is None else torch.tensor(
        [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id), device=ids.device)
    cache, step_ids = None, ids
    for _ in range(max_new_tokens):
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        if use_cache:
            out = model(step_ids, cache=cache, attention_mask=mask, use_cache=True,
                        position_ids=positions[:, -step_ids.shape[1]:])
            cache = out.cache
        else:
            out = model(ids, attention_mask=mask, position_ids=positions)
        logits = out.logits[:, -1]
        if temperature == 0.0:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        if stops is not None:
            nxt = torch.where(done, torch.full_like(nxt, int(stops[0])), nxt)
            done |= torch.isin(nxt, stops)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        step_ids = nxt[:, None]
        if stops is not None and bool(done.all()):
            break
    model.train(was_training)
    return ids
