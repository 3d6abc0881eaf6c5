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
from dataclasses import dataclass

import torch

from . import chat
from . import world as W
from .training import adamw, check_int, check_number, optimizer_step, run_loop


# ---------------------------------------------------------------- the pieces, each tested
def kl_estimate(logp, ref_logp, kind="k1"):
    """Per-token estimate of KL(pi || pi_ref) from log-probs of tokens sampled from pi.

    k1 = log pi - log pi_ref (unbiased, can be negative); k2 = (log pi - log pi_ref)^2 / 2;
    k3 = (rho - 1) - log rho with rho = pi_ref / pi (unbiased, never negative).
    Taught inline in notebook 07 §1 (The pieces, k1 and k3); the notebook asserts they agree."""
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
    ends after its last token, so nothing is bootstrapped past it.
    Taught inline in notebook 07 §1 (The pieces); the notebook asserts they agree."""
    check_number("gamma", gamma, 0, 1)
    check_number("lam", lam, 0, 1)
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


def _check_masked(x, mask):
    if x.shape != mask.shape:
        raise ValueError(f"values {tuple(x.shape)} and mask {tuple(mask.shape)} must have one shape")
    if not bool((mask != 0).any()):
        raise ValueError("the mask selects no entries: nothing to average (is every response empty?)")


def _check_shapes(**tensors):
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{', '.join(shapes)} must have one shape (batch, response tokens), got {shapes}")


def masked_mean(x, mask):
    """Mean of x over the entries where mask is 1."""
    _check_masked(x, mask)
    return (x * mask).sum() / mask.sum()


def whiten(x, mask, eps=1e-8):
    """(x - mean) / std over the masked entries (0 elsewhere)."""
    check_number("eps", eps, 0, low_open=True)
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def policy_loss(logp, old_logp, advantages, mask, clip=0.2):
    """PPO's clipped surrogate: mean of max(-A * ratio, -A * clip(ratio, 1 - clip, 1 + clip)); also the clip fraction.

    Taught inline in notebook 07 §1 (The pieces); the notebook asserts the losses agree."""
    check_number("clip", clip, 0, low_open=True)
    _check_shapes(logp=logp, old_logp=old_logp, advantages=advantages, mask=mask)
    ratio = torch.exp(logp - old_logp)
    loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip))
    clipped = ((ratio - 1).abs() > clip).float()
    return masked_mean(loss, mask), masked_mean(clipped, mask)


def value_loss(values, old_values, returns, mask, clip=0.2):
    """Clipped value loss: 0.5 * mean of max((V - R)^2, (V_clipped - R)^2)."""
    check_number("clip", clip, 0, low_open=True)
    _check_shapes(values=values, old_values=old_values, returns=returns, mask=mask)
    v_clipped = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (v_clipped - returns) ** 2), mask)


class AdaptiveKLController:
    """Ziegler et al. 2019: nudge beta so the measured KL tracks a target."""

    def __init__(self, beta, target, horizon=100):
        self.beta = check_number("beta", beta, 0)
        self.target = check_number("kl_target", target, 0, low_open=True)
        self.horizon = check_number("horizon", horizon, 0, low_open=True)

    def update(self, kl, n_steps=1):
        check_number("kl", kl)
        check_int("n_steps", n_steps)
        error = max(-0.2, min(0.2, kl / self.target - 1))
        self.beta *= 1 + error * n_steps / self.horizon
        return self.beta


def best_of_n_kl(n):
    """Upper bound on the KL of best-of-n sampling from the reference: log n - (n - 1) / n.

    Exact only when no two samples tie (a reference with no atoms); with ties (identical responses) the KL is lower
    (Beirami et al. 2024, "Theoretical guarantees on the best-of-n alignment policy"). Notebook 07 compares it
    with a plug-in estimate of the actual KL."""
    n = check_int("n", n)
    return math.log(n) - (n - 1) / n


def value_model_from(reward_model):
    """A value model initialised from the reward model (its own copy, trainable)."""
    v = copy.deepcopy(reward_model)
    for p in v.parameters():
        p.requires_grad_(True)
    return v


# ---------------------------------------------------------------- one iteration, step by step
def rollout(policy, tokenizer, prompts, max_new_tokens=24, temperature=1.0, generator=None):
    """1. Sample one response per prompt with the KV cache: a `chat.Generation` (texts and token ids)."""
    return chat.sample_responses(policy, tokenizer, prompts, max_new_tokens, temperature, generator)


def response_values(value_model, ro):
    """(B, R) the value model's estimate of the state before each response token."""
    v = value_model(ro.ids, ro.mask, all_positions=True)  # (B, P + R)
    return v[:, ro.prompt_len - 1:-1] * ro.response_mask


def kl_penalised_rewards(scores, logp, ref_logp, mask, beta, kind="k1"):
    """2. Per-token rewards (B, R): -beta * KL_t on every response token, + the score on the last one.
    Also returns the per-token KL estimates (0 on padding)."""
    check_number("beta", beta, 0)
    if scores.dim() != 1 or scores.shape[0] != mask.shape[0]:
        raise ValueError(f"scores must be (B,), one reward-model score per response, got {tuple(scores.shape)} "
                         f"for a mask of shape {tuple(mask.shape)}")
    kl_t = kl_estimate(logp, ref_logp, kind) * mask
    rewards = -beta * kl_t
    last = (mask.sum(-1) - 1).long().clamp_min(0)
    rewards[torch.arange(len(last)), last] += scores
    return rewards, kl_t


def ppo_update(policy, value_model, opt, vopt, ro, old_logp, old_values, adv, returns, cfg, generator):
    """4. cfg.epochs passes over the rollout in shuffled minibatches: a clipped policy step, then a
    clipped value step. Returns the mean policy loss, value loss and clip fraction."""
    policy.train()
    value_model.train()
    m = ro.response_mask.float()
    totals = {"policy_loss": 0.0, "value_loss": 0.0, "clipfrac": 0.0}
    n = 0
    for _ in range(cfg.epochs):
        order = torch.randperm(cfg.batch_size, generator=generator)
        for s in range(0, cfg.batch_size, cfg.minibatch_size):
            idx = order[s:s + cfg.minibatch_size]
            sub = ro.select(idx)
            pl, cf = policy_loss(chat.generation_logprobs(policy, sub), old_logp[idx], adv[idx], m[idx], cfg.clip)
            optimizer_step(pl, opt, None, list(policy.parameters()), 1.0)
            vl = value_loss(response_values(value_model, sub), old_values[idx], returns[idx], m[idx], cfg.value_clip)
            optimizer_step(vl, vopt, None, list(value_model.parameters()), 1.0)
            for k, v in (("policy_loss", pl), ("value_loss", vl), ("clipfrac", cf)):
                totals[k] += v.item()
            n += 1
    return {k: v / n for k, v in totals.items()}


# ---------------------------------------------------------------- the loop
@dataclass
class PPOConfig:
    """PPO's settings; the defaults are the course's RLHF run (notebook 07)."""

    iterations: int = 30  # rollout -> update rounds
    batch_size: int = 64  # prompts per rollout (sampled without replacement from the training prompts)
    minibatch_size: int = 32  # rollout rows per gradient step
    epochs: int = 2  # passes over each rollout
    lr: float = 1e-4  # policy learning rate (AdamW, constant)
    value_lr: float = 1e-4  # value model learning rate
    beta: float = 0.05  # KL coefficient: reward -= beta * KL_t on every token
    kl_target: float = None  # a target KL to adapt beta to (Ziegler's controller); None keeps beta fixed
    kl_kind: str = "k1"  # the per-token KL estimator in the reward: k1, k2 or k3
    gamma: float = 1.0  # discount over a response's tokens
    lam: float = 0.95  # GAE's lambda: 0 = one-step TD, 1 = Monte Carlo returns
    clip: float = 0.2  # PPO's ratio clip
    value_clip: float = 0.2  # how far a value estimate may move from the rollout's per update
    max_new_tokens: int = 24  # response length limit in rollouts
    temperature: float = 1.0  # sampling temperature of rollouts
    seed: int = 0  # prompt draws, sampling and minibatch order

    def __post_init__(self):
        for name in ("iterations", "batch_size", "minibatch_size", "epochs", "max_new_tokens"):
            check_int(name, getattr(self, name))
        if self.minibatch_size > self.batch_size:
            raise ValueError(f"minibatch_size ({self.minibatch_size}) must be <= batch_size ({self.batch_size})")
        for name in ("lr", "value_lr", "clip", "value_clip", "temperature"):
            check_number(name, getattr(self, name), 0, low_open=True)
        check_number("beta", self.beta, 0)
        check_number("gamma", self.gamma, 0, 1)
        check_number("lam", self.lam, 0, 1)
        if self.kl_target is not None:
            check_number("kl_target", self.kl_target, 0, low_open=True)
        if self.kl_kind not in ("k1", "k2", "k3"):
            raise ValueError(f"kl_kind must be 'k1', 'k2' or 'k3', got {self.kl_kind!r}")


@dataclass
class PPOResult:
    """Per iteration (means over the rollout), the evaluations, and the training time."""

    proxy: list  # reward-model score
    gold: list  # gold reward of the same responses
    kl: list  # k-estimator KL to the reference, summed per response
    beta: list  # the KL coefficient used
    policy_loss: list
    value_loss: list
    clipfrac: list  # share of tokens whose ratio was clipped
    length: list  # response tokens
    samples: list  # four (prompt, response) pairs of each rollout
    evals: list  # [(iteration, eval_fn(policy)), ...]
    seconds: float  # wall-clock of training, evaluations excluded


def check_prompts(prompts, per_step, setting):
    """The training prompts of an online method: a list of strings, at least `per_step` (its cfg.`setting`)."""
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a list of prompt strings")
    if len(prompts) < per_step:
        raise ValueError(f"{len(prompts)} training prompts but {setting}={per_step}: pass more prompts or lower "
                         f"cfg.{setting}")


def train_ppo(policy, ref, reward_fn, value_model, tokenizer, prompts, cfg=None, eval_fn=None, eval_every=None,
              progress=True):
    """Optimise `policy` in place against reward_fn(prompts, responses) -> (B,) scores (the reward model),
    with a KL penalty towards the frozen `ref`; `value_model` (see value_model_from) is trained too."""
    cfg = PPOConfig() if cfg is None else cfg
    check_prompts(prompts, cfg.batch_size, "batch_size")
    rng, gen = random.Random(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    for p in value_model.parameters():
        p.requires_grad_(True)
    opt, _ = adamw(policy.parameters(), cfg.lr)
    vopt, _ = adamw(value_model.parameters(), cfg.value_lr)
    ref.eval()
    kl_ctl = AdaptiveKLController(cfg.beta, cfg.kl_target) if cfg.kl_target else None
    beta = cfg.beta
    samples = []

    def iteration(_):
        nonlocal beta
        policy.eval()
        value_model.eval()
        with torch.no_grad():
            ro = rollout(policy, tokenizer, rng.sample(prompts, cfg.batch_size), cfg.max_new_tokens,
                         cfg.temperature, gen)  # 1. rollout, scored by the reward model
            scores = reward_fn(ro.prompts, ro.texts).float()
            old_logp, ref_logp = chat.generation_logprobs(policy, ro), chat.generation_logprobs(ref, ro)
            old_values = response_values(value_model, ro)
            m = ro.response_mask.float()
            rewards, kl_t = kl_penalised_rewards(scores, old_logp, ref_logp, m, beta, cfg.kl_kind)  # 2. rewards
            adv, returns = gae(rewards, old_values, cfg.gamma, cfg.lam, m)  # 3. advantages
            adv = whiten(adv, m)
        losses = ppo_update(policy, value_model, opt, vopt, ro, old_logp, old_values, adv, returns, cfg, gen)  # 4.
        seq_kl = kl_t.sum(-1).mean().item()
        if kl_ctl is not None:
            beta = kl_ctl.update(seq_kl, cfg.batch_size)
        samples.append(list(zip(ro.prompts[:4], ro.texts[:4])))
        gold = [W.gold_reward(p, r).total for p, r in zip(ro.prompts, ro.texts)]
        return {"proxy": scores.mean().item(), "gold": sum(gold) / len(gold), "kl": seq_kl,
                "beta": beta, **losses, "length": m.sum(-1).mean().item()}

    def evaluate():
        policy.eval()
        return eval_fn(policy)

    log = run_loop(iteration, cfg.iterations, f"PPO beta={cfg.beta}", progress, eval_fn and evaluate, eval_every,
                   show=("proxy", "gold", "kl"), show_every=1, unit="iterations")
    policy.eval()
    value_model.eval()
    for p in value_model.parameters():
        p.requires_grad_(False)
    r = log.records
    return PPOResult(r["proxy"], r["gold"], r["kl"], r["beta"], r["policy_loss"], r["value_loss"], r["clipfrac"],
                     r["length"], samples, log.evals, log.seconds)
