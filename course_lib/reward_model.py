"""A reward model: a language-model trunk and a scalar head, trained on preferences.

    r(prompt, response) = w . h_last + b      h_last: the trunk's final hidden state at <|end|>

Trained with the Bradley-Terry loss, mean of -log sigma(r_chosen - r_rejected). With the trunk
frozen (the default) its features are computed once and only the head trains, which takes
seconds; `train_trunk=True` fine-tunes the whole model.
"""
import copy
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from . import model as _model  # noqa: F401  registers the course's GPT with AutoModelForCausalLM
from . import world as W
from .training import adamw, check_int, check_number, collate, lm_example, optimizer_step, run_loop


def bradley_terry_loss(chosen_rewards, rejected_rewards):
    """Mean of -log sigma(r_chosen - r_rejected): the negative log-likelihood of the preferences.

    Taught inline in notebook 06 §4 (The reward model); the notebook asserts they agree."""
    if chosen_rewards.numel() == 0:
        raise ValueError("no pairs: the Bradley-Terry loss of an empty batch is undefined")
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(f"chosen and rejected rewards must have one shape, got {tuple(chosen_rewards.shape)} "
                         f"and {tuple(rejected_rewards.shape)}")
    return -F.logsigmoid(chosen_rewards - rejected_rewards).mean()


class RewardModel(nn.Module):
    """trunk (a causal LM) + head (Linear(hidden, 1)) reading the last real token's final hidden state."""

    def __init__(self, trunk, tokenizer):
        super().__init__()
        self.trunk, self.tokenizer = trunk, tokenizer
        self.head = nn.Linear(trunk.config.hidden_size, 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def encode(self, prompts, responses):
        """(input_ids, attention_mask) of the transcripts, right-padded."""
        if isinstance(prompts, str) or isinstance(responses, str):
            raise ValueError("prompts and responses must be lists of strings (wrap a single one in a list)")
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        if not prompts:
            raise ValueError("no (prompt, response) pairs to encode")
        ex = [lm_example(self.tokenizer, W.chat_text(p, r)) for p, r in zip(prompts, responses)]
        ids, _, mask = collate(ex, self.tokenizer.pad_token_id)
        return ids, mask

    def features(self, input_ids, attention_mask, all_positions=False):
        """Final hidden states: at the last real token (B, H), or at every position (B, T, H)."""
        h = self.trunk(input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states[-1]
        if all_positions:
            return h
        last = attention_mask.sum(-1) - 1  # right padding: index of the last real token
        return h[torch.arange(h.shape[0]), last]

    def forward(self, input_ids, attention_mask, all_positions=False):
        """Rewards (B,), or per-position values (B, T) with all_positions (a value model's use)."""
        return self.head(self.features(input_ids, attention_mask, all_positions)).squeeze(-1)

    @torch.no_grad()
    def score(self, prompts, responses, batch_size=128):
        """Reward of each (prompt, response) as a (N,) tensor."""
        check_int("batch_size", batch_size)
        if isinstance(prompts, str) or isinstance(responses, str) or len(prompts) != len(responses):
            raise ValueError("prompts and responses must be lists of strings, one response per prompt")
        self.eval()
        out = [self(*self.encode(prompts[i:i + batch_size], responses[i:i + batch_size]))
               for i in range(0, len(prompts), batch_size)]
        return torch.cat(out) if out else torch.zeros(0)


def accuracy(chosen_rewards, rejected_rewards):
    """Fraction of pairs ranked as labelled (ties count half)."""
    if chosen_rewards.numel() == 0 or chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(f"need one rejected reward per chosen reward and at least one pair, got shapes "
                         f"{tuple(chosen_rewards.shape)} and {tuple(rejected_rewards.shape)}")
    d = chosen_rewards - rejected_rewards
    return ((d > 0).float() + 0.5 * (d == 0).float()).mean().item()


@dataclass
class RewardConfig:
    """Reward-model training on preference pairs."""

    epochs: int = 3  # passes over the pairs; the epoch with the best held-out accuracy is kept
    batch_size: int = 64  # pairs per step
    lr: float = 1e-3  # AdamW learning rate (constant)
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    train_trunk: bool = False  # False: the trunk is frozen, its features computed once, only the head trains
    seed: int = 0  # the pair order (random.Random(seed)) and torch.manual_seed(seed)

    def __post_init__(self):
        check_int("epochs", self.epochs)
        check_int("batch_size", self.batch_size)
        check_number("lr", self.lr, 0, low_open=True)
        check_number("weight_decay", self.weight_decay, 0)


@dataclass
class RewardResult:
    losses: list  # the Bradley-Terry loss of each step
    train_acc: list  # accuracy on the training pairs after each epoch
    val_acc: list  # accuracy on the held-out pairs after each epoch (empty without val_rows)
    best_epoch: int  # the epoch kept (0-based)
    seconds: float  # wall-clock of training, the frozen trunk's feature pass included


def _check_rows(rows, what):
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or not all(isinstance(r.get(k), str) for k in ("prompt", "chosen", "rejected")):
            raise ValueError(f"{what} row {i} must be a dict with string 'prompt', 'chosen' and 'rejected', got {r!r}")


def _features(rm, rows, side, chunk=256):
    """Final hidden states (N, H) of each row's `side` response, computed without gradients."""
    with torch.no_grad():
        return torch.cat([rm.features(*rm.encode([r["prompt"] for r in rows[i:i + chunk]],
                                                 [r[side] for r in rows[i:i + chunk]]))
                          for i in range(0, len(rows), chunk)])


def _pair_rewards(rm, rows, idx, cached):
    """(chosen, rejected) rewards of rows[idx]: from cached features when the trunk is frozen."""
    if cached is not None:
        return rm.head(cached[0][idx]).squeeze(-1), rm.head(cached[1][idx]).squeeze(-1)
    batch = [rows[k] for k in idx]
    prompts = [r["prompt"] for r in batch]
    return rm(*rm.encode(prompts, [r["chosen"] for r in batch])), rm(*rm.encode(prompts, [r["rejected"] for r in batch]))


@torch.no_grad()
def _acc(rm, rows, cached=None):
    if cached is not None:
        return accuracy(rm.head(cached[0]).squeeze(-1), rm.head(cached[1]).squeeze(-1))
    return accuracy(rm.score([r["prompt"] for r in rows], [r["chosen"] for r in rows]),
                    rm.score([r["prompt"] for r in rows], [r["rejected"] for r in rows]))


def train_reward_model(rm, rows, val_rows=None, cfg=None, progress=False):
    """Train `rm` on preference rows {"prompt", "chosen", "rejected"} with the Bradley-Terry loss; keep the
    epoch with the best validation accuracy (later epochs can over-fit). Returns a RewardResult."""
    cfg = RewardConfig() if cfg is None else cfg
    if not rows:
        raise ValueError("no preference rows to train on")
    _check_rows(rows, "training")
    _check_rows(val_rows or [], "validation")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    for p in rm.trunk.parameters():
        p.requires_grad_(cfg.train_trunk)
    frozen, t0 = not cfg.train_trunk, time.perf_counter()
    cached = (_features(rm, rows, "chosen"), _features(rm, rows, "rejected")) if frozen else None
    val_cached = (_features(rm, val_rows, "chosen"), _features(rm, val_rows, "rejected")) if frozen and val_rows \
        else None
    feature_seconds = time.perf_counter() - t0
    params = [p for p in rm.parameters() if p.requires_grad]
    opt, _ = adamw(params, cfg.lr, cfg.weight_decay)
    losses, best = [], {"acc": -1.0, "state": None, "epoch": 0}

    def epoch(e):
        order = rng.sample(range(len(rows)), len(rows))
        rm.train()
        for i in range(0, len(order), cfg.batch_size):
            loss = bradley_terry_loss(*_pair_rewards(rm, rows, order[i:i + cfg.batch_size], cached))
            optimizer_step(loss, opt, None, params, 0)
            losses.append(loss.item())
        rm.eval()
        out = {"train_acc": _acc(rm, rows, cached)}
        if val_rows:
            out["val_acc"] = _acc(rm, val_rows, val_cached)
            if out["val_acc"] > best["acc"]:
                best.update(acc=out["val_acc"], state=copy.deepcopy(rm.state_dict()), epoch=e)
        return out

    log = run_loop(epoch, cfg.epochs, "reward model", progress, show=("train_acc",), show_every=1, unit="epochs")
    if best["state"] is not None:
        rm.load_state_dict(best["state"])
    for p in rm.trunk.parameters():
        p.requires_grad_(False)
    rm.eval()
    return RewardResult(losses, log.records["train_acc"], log.records.get("val_acc", []), best["epoch"],
                        feature_seconds + log.seconds)


def save(rm, folder):
    """Trunk with save_pretrained (safetensors) in folder/trunk, head as folder/head.safetensors."""
    folder = Path(folder)
    rm.trunk.save_pretrained(str(folder / "trunk"))
    save_file({k: v.contiguous() for k, v in rm.head.state_dict().items()}, str(folder / "head.safetensors"))


def load(folder, tokenizer):
    """A reward model saved by `save`, frozen, in eval mode."""
    folder = Path(folder)
    trunk = AutoModelForCausalLM.from_pretrained(str(folder / "trunk"), use_safetensors=True)
    rm = RewardModel(trunk, tokenizer)
    rm.head.load_state_dict(load_file(str(folder / "head.safetensors")))
    for p in rm.parameters():
        p.requires_grad_(False)
    return rm.eval()
