"""A reward model: a language-model trunk and a scalar head, trained on preferences.

    r(prompt, response) = w . h_last + b      h_last: the trunk's final hidden state at <|end|>

Trained with the Bradley-Terry loss, mean of -log sigma(r_chosen - r_rejected). With the trunk
frozen (the default) its features are computed once and only the head trains, which takes
seconds; `train_trunk=True` fine-tunes the whole model.
"""
import copy
import random
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from .data import chat_text
from .training import collate, lm_example


def bradley_terry_loss(chosen_rewards, rejected_rewards):
    """Mean of -log sigma(r_chosen - r_rejected): the negative log-likelihood of the preferences."""
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
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        ex = [lm_example(self.tokenizer, chat_text(p, r)) for p, r in zip(prompts, responses)]
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
        self.eval()
        out = [self(*self.encode(prompts[i:i + batch_size], responses[i:i + batch_size]))
               for i in range(0, len(prompts), batch_size)]
        return torch.cat(out) if out else torch.zeros(0)


def accuracy(chosen_rewards, rejected_rewards):
    """Fraction of pairs ranked as labelled (ties count half)."""
    d = chosen_rewards - rejected_rewards
    return ((d > 0).float() + 0.5 * (d == 0).float()).mean().item()


def train_reward_model(rm, rows, val_rows=None, epochs=3, batch_size=64, lr=1e-3, seed=0, train_trunk=False,
                       weight_decay=0.0, progress=False):
    """Train `rm` on preference rows {"prompt", "chosen", "rejected"}; keep the epoch with the best
    validation accuracy (later epochs can over-fit). Returns a log of losses and accuracies."""
    if not rows:
        raise ValueError("no preference rows to train on")
    torch.manual_seed(seed)
    rng = random.Random(seed)
    for p in rm.trunk.parameters():
        p.requires_grad_(train_trunk)

    def feats(rs):  # frozen trunk: compute features once
        with torch.no_grad():
            c = torch.cat([rm.features(*rm.encode([r["prompt"] for r in rs[i:i + 256]],
                                                   [r["chosen"] for r in rs[i:i + 256]]))
                           for i in range(0, len(rs), 256)])
            j = torch.cat([rm.features(*rm.encode([r["prompt"] for r in rs[i:i + 256]],
                                                   [r["rejected"] for r in rs[i:i + 256]]))
                           for i in range(0, len(rs), 256)])
        return c, j

    t0 = time.perf_counter()
    cached = None if train_trunk else feats(rows)
    val_cached = None if (train_trunk or not val_rows) else feats(val_rows)
    params = [p for p in rm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    log = {"losses": [], "train_acc": [], "val_acc": [], "best_epoch": 0}
    best_acc, best_state = -1.0, None
    for epoch in range(epochs):
        order = rng.sample(range(len(rows)), len(rows))
        rm.train()
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            if cached is not None:
                rc, rr = rm.head(cached[0][idx]).squeeze(-1), rm.head(cached[1][idx]).squeeze(-1)
            else:
                batch = [rows[k] for k in idx]
                rc = rm(*rm.encode([r["prompt"] for r in batch], [r["chosen"] for r in batch]))
                rr = rm(*rm.encode([r["prompt"] for r in batch], [r["rejected"] for r in batch]))
            loss = bradley_terry_loss(rc, rr)
            opt.zero_grad()
            loss.backward()
            opt.step()
            log["losses"].append(loss.item())
        rm.eval()
        log["train_acc"].append(_acc(rm, rows, cached))
        if val_rows:
            acc = _acc(rm, val_rows, val_cached)
            log["val_acc"].append(acc)
            if acc > best_acc:
                best_acc, best_state, log["best_epoch"] = acc, copy.deepcopy(rm.state_dict()), epoch
    if best_state is not None:
        rm.load_state_dict(best_state)
    for p in rm.trunk.parameters():
        p.requires_grad_(False)
    rm.eval()
    log["seconds"] = time.perf_counter() - t0
    return log


@torch.no_grad()
def _acc(rm, rows, cached=None):
    if cached is not None:
        return accuracy(rm.head(cached[0]).squeeze(-1), rm.head(cached[1]).squeeze(-1))
    return accuracy(rm.score([r["prompt"] for r in rows], [r["chosen"] for r in rows]),
                    rm.score([r["prompt"] for r in rows], [r["rejected"] for r in rows]))


def save(rm, folder):
    """Trunk with save_pretrained (safetensors) in folder/trunk, head as folder/head.safetensors."""
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    rm.trunk.save_pretrained(str(folder / "trunk"))
    save_file({k: v.contiguous() for k, v in rm.head.state_dict().items()}, str(folder / "head.safetensors"))


def load(folder, tokenizer):
    from pathlib import Path

    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from . import model as _  # noqa: F401  registers the course's GPT

    folder = Path(folder)
    trunk = AutoModelForCausalLM.from_pretrained(str(folder / "trunk"), use_safetensors=True)
    rm = RewardModel(trunk, tokenizer)
    rm.head.load_state_dict(load_file(str(folder / "head.safetensors")))
    for p in rm.parameters():
        p.requires_grad_(False)
    return rm.eval()
