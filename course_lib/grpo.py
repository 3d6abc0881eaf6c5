"""GRPO from scratch (Shao et al. 2024, "DeepSeekMath", §4.1): PPO's clipped surrogate without a value model.

One iteration:
    1. rollout     k responses sampled for each prompt (a group), each scored by reward_fn
    2. advantages  A_i = (r_i - mean(r_1..r_k)) / std(r_1..r_k), the same for every token of response i
    3. update      per token  -min(ratio * A_i, clip(ratio, 1 - eps, 1 + eps) * A_i) + beta * k3,
                   averaged over each response's tokens, then over the responses

What differs from the course's PPO (course_lib.ppo): the baseline is the group's mean reward, so there is no value
model and no GAE; the KL to the reference enters the loss as the per-token estimator k3 = pi_ref/pi - log(pi_ref/pi) - 1
(the paper's Eq. 4), where PPO subtracts beta * k1 from the reward. Two models are held: the policy and the reference.
The advantage uses the sample standard deviation and adds 1e-4 to it, as TRL's GRPOTrainer does; the loss is TRL's
loss_type="grpo" (tests/test_grpo.py checks both against TRL). Taught in notebook 11 §5.
"""
import random
from dataclasses import dataclass

import torch

from . import chat
from .ppo import check_prompts, kl_estimate, rollout
from .training import adamw, check_int, check_number, optimizer_step, run_loop


def group_advantages(rewards, k, scale=True, eps=1e-4):
    """(N,) advantages of (N,) rewards in groups of k consecutive entries (one prompt's samples, as TRL orders them):
    r_i minus its group's mean, divided by the group's sample std + eps when scale (else only centred).

    Taught inline in notebook 11 §5 (exercise 11.group_advantages); the notebook asserts they agree."""
    check_int("k (samples per prompt; a group needs at least 2)", k, 2)
    check_number("eps", eps, 0)
    if not isinstance(rewards, torch.Tensor) or rewards.dim() != 1:
        raise ValueError(f"rewards must be a 1-D tensor, one reward per response, got "
                         f"{tuple(rewards.shape) if isinstance(rewards, torch.Tensor) else type(rewards).__name__}")
    if rewards.numel() == 0 or rewards.numel() % k:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of k={k}: pass k samples of each prompt, "
                         "each prompt's samples next to each other")
    groups = rewards.view(-1, k)  # (prompts, k)
    adv = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        adv = adv / (groups.std(dim=1, keepdim=True) + eps)  # sample std (Bessel's correction), as TRL's nanstd
    return adv.reshape(-1)


def grpo_loss(logp, old_logp, ref_logp, advantages, mask, beta=0.04, clip=0.2):
    """GRPO's loss of (B, R) per-token log-probs under the policy (with gradients), the policy that sampled them and the
    reference, the (B,) advantages and the (B, R) response mask -> (loss, {"kl": mean k3, "clipfrac": share clipped}).

    Taught inline in notebook 11 §5 (exercise 11.grpo_loss); the notebook asserts they agree."""
    check_number("beta", beta, 0)
    check_number("clip", clip, 0, low_open=True)
    shapes = {"logp": logp.shape, "old_logp": old_logp.shape, "ref_logp": ref_logp.shape, "mask": mask.shape}
    if len(set(shapes.values())) > 1 or logp.dim() != 2:
        raise ValueError(f"logp, old_logp, ref_logp and mask must all be (batch, response tokens), got "
                         f"{ {k: tuple(v) for k, v in shapes.items()} }")
    if advantages.shape != logp.shape[:1]:
        raise ValueError(f"advantages must be ({logp.shape[0]},), one per response, got {tuple(advantages.shape)}")
    mask = mask.to(logp.dtype)
    lengths = mask.sum(-1)
    if bool((lengths == 0).any()):
        raise ValueError("a response has no tokens in the mask: every response needs at least one token")
    ratio = torch.exp(logp - old_logp)
    a = advantages[:, None]  # (B, 1): every token of a response shares its advantage
    surrogate = -torch.min(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    kl = kl_estimate(logp, ref_logp, "k3")  # rho = pi_ref / pi: exp(ref - logp) - (ref - logp) - 1, TRL's per_token_kl
    per_token = surrogate + beta * kl
    loss = ((per_token * mask).sum(-1) / lengths).mean()  # each response's mean, then the mean over responses
    n = mask.sum()
    stats = {"kl": ((kl * mask).sum() / n).detach(), "clipfrac": ((((ratio - 1).abs() > clip).to(mask.dtype) * mask).sum() / n).detach()}
    return loss, stats


@dataclass
class GRPOConfig:
    """GRPO's settings; the defaults fit notebook 11's budget on this CPU."""

    iterations: int = 10  # rollout -> update rounds
    prompts_per_step: int = 16  # prompts drawn per round (without replacement)
    k: int = 4  # responses sampled per prompt: the group (TRL's num_generations)
    epochs: int = 1  # passes over each rollout (TRL's num_iterations); with 1 the ratio is 1 and the clip never binds
    minibatch_size: int = None  # rollout rows per gradient step; None = the whole rollout in one step
    lr: float = 1e-4  # policy learning rate (AdamW, constant)
    beta: float = 0.04  # weight of the k3 KL term in the loss (the paper's and TRL's older default)
    clip: float = 0.2  # the ratio clip, epsilon
    max_new_tokens: int = 24  # response length limit in rollouts
    temperature: float = 1.0  # sampling temperature of rollouts
    seed: int = 0  # prompt draws, sampling and minibatch order

    def __post_init__(self):
        for name in ("iterations", "prompts_per_step", "epochs", "max_new_tokens"):
            check_int(name, getattr(self, name))
        check_int("k (samples per prompt; a group needs at least 2)", self.k, 2)
        rows = self.prompts_per_step * self.k
        if self.minibatch_size is not None:
            check_int("minibatch_size", self.minibatch_size)
            if self.minibatch_size > rows:
                raise ValueError(f"minibatch_size ({self.minibatch_size}) must be <= prompts_per_step * k ({rows})")
        for name in ("lr", "clip", "temperature"):
            check_number(name, getattr(self, name), 0, low_open=True)
        check_number("beta", self.beta, 0)


@dataclass
class GRPOResult:
    """Per iteration (means over the rollout), the evaluations, and the training time."""

    reward: list  # mean reward of the rollout's responses
    kl: list  # mean per-token k3 KL to the reference, at the update
    loss: list
    clipfrac: list  # share of tokens whose ratio was clipped
    length: list  # response tokens
    samples: list  # four (prompt, response) pairs of each rollout
    evals: list  # [(iteration, eval_fn(policy)), ...]
    seconds: float  # wall-clock of training, evaluations excluded


def train_grpo(policy, ref, reward_fn, tokenizer, prompts, cfg=None, eval_fn=None, eval_every=None, progress=True):
    """Optimise `policy` in place against reward_fn(prompts, responses) -> (N,) scores, with the k3 KL to the frozen
    `ref` in the loss. Returns a GRPOResult."""
    cfg = GRPOConfig() if cfg is None else cfg
    check_prompts(prompts, cfg.prompts_per_step, "prompts_per_step")
    rng, gen = random.Random(cfg.seed), torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    opt, _ = adamw(policy.parameters(), cfg.lr)
    ref.eval()
    rows = cfg.prompts_per_step * cfg.k
    mb = cfg.minibatch_size or rows
    samples = []

    def iteration(_):
        policy.eval()
        drawn = rng.sample(prompts, cfg.prompts_per_step)
        group_prompts = [p for p in drawn for _ in range(cfg.k)]  # each prompt k times in a row: one group
        with torch.no_grad():
            ro = rollout(policy, tokenizer, group_prompts, cfg.max_new_tokens, cfg.temperature, gen)  # 1. rollout
            scores = torch.as_tensor(reward_fn(ro.prompts, ro.texts), dtype=torch.float32)
            adv = group_advantages(scores, cfg.k)  # 2. advantages
            old_logp, ref_logp = chat.generation_logprobs(policy, ro), chat.generation_logprobs(ref, ro)
        m = ro.response_mask.float()
        policy.train()
        totals, n = {"loss": 0.0, "kl": 0.0, "clipfrac": 0.0}, 0
        for _ in range(cfg.epochs):  # 3. update
            order = torch.randperm(rows, generator=gen)
            for s in range(0, rows, mb):
                idx = order[s:s + mb]
                sub = ro.select(idx)
                loss, st = grpo_loss(chat.generation_logprobs(policy, sub), old_logp[idx], ref_logp[idx], adv[idx],
                                     m[idx], cfg.beta, cfg.clip)
                optimizer_step(loss, opt, None, list(policy.parameters()), 1.0)
                totals["loss"] += loss.item()
                totals["kl"] += st["kl"].item()
                totals["clipfrac"] += st["clipfrac"].item()
                n += 1
        samples.append(list(zip(ro.prompts[:4], ro.texts[:4])))
        return {"reward": scores.mean().item(), **{key: v / n for key, v in totals.items()},
                "length": m.sum(-1).mean().item()}

    def evaluate():
        policy.eval()
        return eval_fn(policy)

    log = run_loop(iteration, cfg.iterations, f"GRPO k={cfg.k}", progress, eval_fn and evaluate, eval_every,
                   show=("reward", "kl"), show_every=1, unit="iterations")
    policy.eval()
    r = log.records
    return GRPOResult(r["reward"], r["kl"], r["loss"], r["clipfrac"], r["length"], samples, log.evals, log.seconds)
