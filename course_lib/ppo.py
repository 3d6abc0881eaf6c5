"""RLHF with PPO, from scratch: rollouts, a per-token KL penalty, GAE, clipped losses.

One iteration:
    1. rollout   sample responses from the policy (KV cache), score them with the reward model
    2. rewards   r_t = -beta * KL_t on every response token, + reward-model score on the last one
    3. GAE       advantages and returns from the value model's estimates (no bootstrap after the end)
    4. update    a few epochs of minibatches: clipped policy loss + clipped value loss

Four models are involved: the policy (trained), the reference (frozen SFT model), the reward
model (frozen) and the value model (trained; initialised from the reward model).
"""
import copy
import math
import random
import time
from dataclasses import dataclass, field

import torch

from . import world as W
from .data import chat_prompt
from .model import generate_tokens
from .training import IGNORE, collate, token_logprobs


# ---------------------------------------------------------------- the pieces, each tested
def kl_estimate(logp, ref_logp, kind="k1"):
    """Per-token estimate of KL(pi || pi_ref) from log-probs of tokens sampled from pi.

    k1 = log pi - log pi_ref (unbiased, can be negative); k2 = (log pi - log pi_ref)^2 / 2;
    k3 = (rho - 1) - log rho with rho = pi_ref / pi (unbiased, never negative, lower variance)."""
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} must have one shape")
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio ** 2
    if kind == "k3":
        log_rho = -log_ratio
        return torch.expm1(log_rho) - log_rho
    raise ValueError(f"kind must be 'k1', 'k2' or 'k3', got {kind!r}")


def gae(rewards, values, gamma=1.0, lam=0.95, mask=None):
    """Generalised advantage estimation for (batch, time) tensors -> (advantages, returns).

    mask (batch, time) marks each response's tokens (1) and the padding after it (0); a response
    ends after its last token, so nothing is bootstrapped past it."""
    if rewards.shape != values.shape or rewards.dim() != 2:
        raise ValueError(f"rewards {tuple(rewards.shape)} and values {tuple(values.shape)} must both be (batch, time)")
    mask = torch.ones_like(rewards) if mask is None else mask.to(rewards.dtype)
    if mask.shape != rewards.shape:
        raise ValueError(f"mask {tuple(mask.shape)} must have the rewards' shape {tuple(rewards.shape)}")
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    next_adv = torch.zeros_like(rewards[:, 0])
    next_value = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        alive = mask[:, t + 1] if t + 1 < T else torch.zeros_like(next_value)  # is there a step after t?
        delta = rewards[:, t] + gamma * next_value * alive - values[:, t]
        next_adv = delta + gamma * lam * next_adv * alive
        adv[:, t] = next_adv * mask[:, t]
        next_value = values[:, t]
    return adv, (adv + values) * mask


def masked_mean(x, mask):
    return (x * mask).sum() / mask.sum().clamp_min(1)


def whiten(x, mask, eps=1e-8):
    """(x - mean) / std over the masked entries."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def policy_loss(logp, old_logp, advantages, mask, clip=0.2):
    """PPO's clipped surrogate: mean of max(-A * ratio, -A * clip(ratio, 1 - clip, 1 + clip)); also the clip fraction."""
    ratio = torch.exp(logp - old_logp)
    loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip))
    clipped = ((ratio - 1).abs() > clip).float()
    return masked_mean(loss, mask), masked_mean(clipped, mask)


def value_loss(values, old_values, returns, mask, clip=0.2):
    """Clipped value loss: 0.5 * mean of max((V - R)^2, (V_clipped - R)^2)."""
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (v_clipped - returns) ** 2), mask)


class AdaptiveKLController:
    """Ziegler et al. 2019: nudge beta so the measured KL tracks a target."""

    def __init__(self, beta, target, horizon=100):
        self.beta, self.target, self.horizon = beta, target, horizon

    def update(self, kl, n_steps=1):
        error = max(-0.2, min(0.2, kl / self.target - 1))
        self.beta *= 1 + error * n_steps / self.horizon
        return self.beta


# ---------------------------------------------------------------- rollouts
@dataclass
class Rollout:
    prompts: list
    responses: list  # decoded response texts
    ids: torch.Tensor  # (B, P + R) prompt (left-padded) + response tokens
    mask: torch.Tensor  # (B, P + R) attention mask: 1 on real prompt and response tokens
    resp_mask: torch.Tensor  # (B, R) 1 on response tokens up to and including the stop token
    prompt_len: int


def rollout(policy, tokenizer, prompts, max_new_tokens=24, temperature=1.0, generator=None):
    """Sample one response per prompt with the KV cache; stop at <|end|> (or a started critique)."""
    stops = tokenizer.convert_tokens_to_ids(["<|end|>", "<|critique|>"])
    enc = [tokenizer(chat_prompt(p), add_special_tokens=False).input_ids for p in prompts]
    ids, _, pmask = collate([(e, e) for e in enc], tokenizer.pad_token_id, left_pad=True)
    full = generate_tokens(policy, ids, max_new_tokens, temperature=temperature, eos_token_id=stops,
                           attention_mask=pmask, generator=generator)
    P = ids.shape[1]
    resp = full[:, P:]
    is_stop = torch.isin(resp, torch.tensor(stops))
    # keep tokens up to and including the first stop token
    before_stop = (is_stop.long().cumsum(-1) - is_stop.long()) == 0
    resp_mask = before_stop.long()
    texts = []
    for row, m in zip(resp.tolist(), resp_mask.tolist()):
        toks = [t for t, k in zip(row, m) if k and t not in stops]
        texts.append(tokenizer.decode(toks).strip())
    return Rollout(list(prompts), texts, full, torch.cat([pmask, resp_mask], 1), resp_mask, P)


def response_logprobs(model, ro):
    """(B, R) log-probs of the rollout's response tokens under `model` (0 on padding)."""
    labels = ro.ids.masked_fill(ro.mask == 0, IGNORE)
    labels[:, :ro.prompt_len] = IGNORE
    lp = token_logprobs(model(ro.ids, attention_mask=ro.mask).logits, labels)  # (B, T-1)
    return lp[:, ro.prompt_len - 1:]


def response_values(value_model, ro):
    """(B, R) value of the state before each response token."""
    v = value_model(ro.ids, ro.mask, all_positions=True)  # (B, T)
    return v[:, ro.prompt_len - 1:-1] * ro.resp_mask


def exact_kl(policy, ref, ro):
    """Sequence KL summed exactly over the vocabulary at each response position, (B,)."""
    lp = torch.log_softmax(policy(ro.ids, attention_mask=ro.mask).logits[:, ro.prompt_len - 1:-1].float(), -1)
    lq = torch.log_softmax(ref(ro.ids, attention_mask=ro.mask).logits[:, ro.prompt_len - 1:-1].float(), -1)
    return ((lp.exp() * (lp - lq)).sum(-1) * ro.resp_mask).sum(-1)


# ---------------------------------------------------------------- the loop
@dataclass
class PPOConfig:
    iterations: int = 30
    batch_size: int = 64  # prompts per rollout
    minibatch_size: int = 32
    epochs: int = 2  # passes over each rollout
    lr: float = 1e-4
    value_lr: float = 1e-4
    beta: float = 0.05  # KL coefficient
    kl_target: float = None  # set to adapt beta (Ziegler's controller)
    kl_kind: str = "k1"
    gamma: float = 1.0
    lam: float = 0.95
    clip: float = 0.2
    value_clip: float = 0.2
    max_new_tokens: int = 24
    temperature: float = 1.0
    seed: int = 0
    extra: dict = field(default_factory=dict)


def train_ppo(policy, ref, reward_fn, value_model, tokenizer, prompts, cfg=PPOConfig(), eval_fn=None,
              eval_every=None, progress=True):
    """Optimise `policy` in place. reward_fn(prompts, responses) -> (B,) scores (the reward model).

    Returns a log: per iteration the mean proxy reward, gold reward, KL (k1 summed per response),
    beta, losses, clip fraction, response length; eval_fn(policy) results every eval_every; and
    "seconds", the training wall-clock without the time spent in eval_fn."""
    if not prompts:
        raise ValueError("no prompts to train on")
    rng = random.Random(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)
    vopt = torch.optim.AdamW(value_model.parameters(), lr=cfg.value_lr, weight_decay=0.0)
    for p in value_model.parameters():
        p.requires_grad_(True)
    ref.eval()
    kl_ctl = AdaptiveKLController(cfg.beta, cfg.kl_target) if cfg.kl_target else None
    beta = cfg.beta
    log = {k: [] for k in ("proxy", "gold", "kl", "beta", "policy_loss", "value_loss", "clipfrac", "length",
                           "samples")}
    log["evals"] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iterations, desc=f"PPO beta={cfg.beta}", leave=False)
    t0 = time.perf_counter()
    eval_seconds = 0.0
    for it in range(cfg.iterations):
        batch_prompts = rng.sample(prompts, cfg.batch_size)
        policy.eval()
        value_model.eval()
        with torch.no_grad():
            ro = rollout(policy, tokenizer, batch_prompts, cfg.max_new_tokens, cfg.temperature, gen)
            old_logp = response_logprobs(policy, ro)
            ref_logp = response_logprobs(ref, ro)
            old_values = response_values(value_model, ro)
            scores = reward_fn(ro.prompts, ro.responses).float()
            m = ro.resp_mask.float()
            kl_t = kl_estimate(old_logp, ref_logp, cfg.kl_kind) * m
            rewards = -beta * kl_t
            last = (m.sum(-1) - 1).long().clamp_min(0)
            rewards[torch.arange(len(last)), last] += scores
            adv, returns = gae(rewards, old_values, cfg.gamma, cfg.lam, m)
            adv = whiten(adv, m)
        policy.train()
        value_model.train()
        pl_sum = vl_sum = cf_sum = 0.0
        n_mb = 0
        for _ in range(cfg.epochs):
            order = torch.randperm(cfg.batch_size, generator=gen)
            for s in range(0, cfg.batch_size, cfg.minibatch_size):
                idx = order[s:s + cfg.minibatch_size]
                sub = Rollout([ro.prompts[i] for i in idx], [ro.responses[i] for i in idx], ro.ids[idx],
                              ro.mask[idx], ro.resp_mask[idx], ro.prompt_len)
                mm = m[idx]
                logp = response_logprobs(policy, sub)
                pl, cf = policy_loss(logp, old_logp[idx], adv[idx], mm, cfg.clip)
                opt.zero_grad()
                pl.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                opt.step()
                vals = response_values(value_model, sub)
                vl = value_loss(vals, old_values[idx], returns[idx], mm, cfg.value_clip)
                vopt.zero_grad()
                vl.backward()
                torch.nn.utils.clip_grad_norm_(value_model.parameters(), 1.0)
                vopt.step()
                pl_sum, vl_sum, cf_sum, n_mb = pl_sum + pl.item(), vl_sum + vl.item(), cf_sum + cf.item(), n_mb + 1
        seq_kl = kl_t.sum(-1).mean().item()
        if kl_ctl is not None:
            beta = kl_ctl.update(seq_kl, cfg.batch_size)
        gold = [W.gold_reward(p, r).total for p, r in zip(ro.prompts, ro.responses)]
        for k, v in (("proxy", scores.mean().item()), ("gold", sum(gold) / len(gold)), ("kl", seq_kl),
                     ("beta", beta), ("policy_loss", pl_sum / n_mb), ("value_loss", vl_sum / n_mb),
                     ("clipfrac", cf_sum / n_mb), ("length", m.sum(-1).mean().item())):
            log[k].append(v)
        log["samples"].append(list(zip(ro.prompts[:4], ro.responses[:4])))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(proxy=f"{log['proxy'][-1]:.2f}", gold=f"{log['gold'][-1]:.2f}", kl=f"{seq_kl:.2f}")
        if eval_fn is not None and eval_every and ((it + 1) % eval_every == 0 or it + 1 == cfg.iterations):
            policy.eval()
            te = time.perf_counter()
            log["evals"].append((it + 1, eval_fn(policy)))
            eval_seconds += time.perf_counter() - te
    if bar is not None:
        bar.close()
    policy.eval()
    value_model.eval()
    for p in value_model.parameters():
        p.requires_grad_(False)
    log["seconds"] = time.perf_counter() - t0 - eval_seconds
    return log


def value_model_from(reward_model):
    """A value model initialised from the reward model (its own copy, trainable)."""
    v = copy.deepcopy(reward_model)
    for p in v.parameters():
        p.requires_grad_(True)
    return v


def best_of_n_kl(n):
    """Analytic KL of best-of-n sampling from the reference: log n - (n - 1) / n."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    return math.log(n) - (n - 1) / n
