"""Direct Preference Optimisation (Rafailov et al. 2023, Eq. 7): preferences as classification.

For a prompt x with a chosen response y_w and a rejected one y_l,

    loss = -log σ( β [ (log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x)) ] )

where log π(y|x) is summed over the response tokens only (prompt and padding masked, as in
`chat.response_logprobs`). β (log π - log π_ref) is the policy's implicit reward; the loss
is Bradley-Terry on the two rewards. There is no reward model and no sampling, but the
reference π_ref is needed: its log-probs of every chosen and rejected response. They never
change, so `precompute_reference_logprobs` computes them once before training, and the
reference model need not be held while the policy trains.

A pair is a dict {"prompt", "chosen", "rejected"} of strings, in the chat template of
`chat.response_example`; other keys (annotator, ...) are ignored.
"""
import math
import numbers
import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import chat
from . import world as W
from .memory import peak_memory
from .training import BatchSampler, adamw, check_int, check_step_settings, optimizer_step, run_loop


def _check_beta(beta):
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a finite number > 0 (the strength of the pull towards the reference), "
                         f"got {beta!r}")
    return float(beta)


def _check_label_smoothing(eps):
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 <= eps < 0.5:
        raise ValueError(f"label_smoothing must be a number in [0, 0.5) (the probability that a label is flipped; "
                         f"0 is plain DPO), got {eps!r}")
    return float(eps)


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
             label_smoothing=0.0):
    """Per-pair DPO losses and implicit rewards.

    Each input is (N,): one summed response log-probability per pair. Returns
    (losses, chosen_rewards, rejected_rewards), each (N,):
        losses           = -logsigmoid(β ((πc - rc) - (πr - rr)))      (label_smoothing ε = 0)
                         = -(1 - ε) logsigmoid(β z) - ε logsigmoid(-β z), z as above   (conservative DPO, cDPO:
                           each label trusted with probability 1 - ε; Mitchell 2023, TRL's `label_smoothing`)
        chosen_rewards   = β (πc - rc), detached      (the margin is chosen_rewards - rejected_rewards)
        rejected_rewards = β (πr - rr), detached
    At policy == reference every loss is ln 2 and every reward 0.
    Taught inline in notebook 08 §1 (From RLHF's objective to a classification loss); the notebook asserts they agree."""
    beta = _check_beta(beta)
    eps = _check_label_smoothing(label_smoothing)
    names = ["policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps"]
    inputs = [policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps]
    for name, x in zip(names, inputs):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 1:
            raise ValueError(f"{name} must be 1-D (N,), one log-prob per pair summed over the response tokens; "
                             f"got shape {tuple(x.shape)}")
    shapes = {name: tuple(x.shape) for name, x in zip(names, inputs)}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"the four log-prob tensors must have the same shape (one entry per pair), got {shapes}")
    if policy_chosen_logps.numel() == 0:
        raise ValueError("no pairs: the DPO loss of an empty batch is undefined")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # log π/π_ref (y_w)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # log π/π_ref (y_l)
    z = beta * (chosen_logratios - rejected_logratios)
    losses = -F.logsigmoid(z) if eps == 0 else -(1 - eps) * F.logsigmoid(z) - eps * F.logsigmoid(-z)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def _check_pairs(pairs):
    if not pairs:
        raise ValueError("no preference pairs")
    for i, p in enumerate(pairs):
        if not isinstance(p, dict) or not all(isinstance(p.get(k), str) for k in ("prompt", "chosen", "rejected")):
            raise ValueError(f"pair {i} must be a dict with string 'prompt', 'chosen' and 'rejected', got {p!r}")


def pair_logprobs(model, tokenizer, pairs):
    """(chosen, rejected) summed response log-probs, each (N,), from one forward pass over all 2N
    sequences (chosen rows first, as TRL's concatenated forward); with gradients if enabled."""
    _check_pairs(pairs)
    prompts = [p["prompt"] for p in pairs] * 2
    responses = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    logps = chat.response_logprobs(model, tokenizer, prompts, responses, batch_size=len(prompts))
    return logps[:len(pairs)], logps[len(pairs):]


@torch.no_grad()
def precompute_reference_logprobs(ref_model, tokenizer, pairs, batch_size=64):
    """The reference's (chosen, rejected) log-probs for every pair, each (N,), computed once without
    gradients. Keep these two tensors (8 bytes a pair) and the reference model can be let go."""
    _check_pairs(pairs)
    check_int("batch_size", batch_size)
    ref_model.eval()
    chosen, rejected = [], []
    for i in range(0, len(pairs), batch_size):
        c, r = pair_logprobs(ref_model, tokenizer, pairs[i:i + batch_size])
        chosen.append(c)
        rejected.append(r)
    return torch.cat(chosen).float().cpu(), torch.cat(rejected).float().cpu()


def trl_preference_rows(pairs):
    """The pairs in TRL's standard (non-conversational) preference format, tokenised by TRL's DPOTrainer into
    exactly the token ids of `pair_logprobs`: the prompt in the course's chat format, each completion " " + response
    (TRL appends the EOS token, as `chat.response_example` does). Used by notebook 08's TRL cell and tests/test_dpo.py."""
    _check_pairs(pairs)
    return [{"prompt": W.chat_prompt(p["prompt"]), "chosen": " " + p["chosen"], "rejected": " " + p["rejected"]}
            for p in pairs]


def _check_ref_logps(ref_logps, n):
    try:
        chosen, rejected = ref_logps
    except (TypeError, ValueError):
        raise ValueError("ref_logps must be the pair (ref_chosen, ref_rejected) that "
                         "precompute_reference_logprobs returns") from None
    for name, x in (("ref_chosen", chosen), ("ref_rejected", rejected)):
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != (n,):
            raise ValueError(f"{name} must be a tensor of shape ({n},), one log-prob per pair, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}; "
                             "were the reference log-probs computed on these pairs?")
    return chosen.detach(), rejected.detach()


def _nbytes(model):
    return 0 if model is None else sum(p.numel() * p.element_size() for p in model.parameters())


@dataclass
class DPOConfig:
    """DPO's settings."""

    beta: float = 0.1  # strength of the pull towards the reference (the implicit reward's scale)
    steps: int = 50  # AdamW steps
    batch_size: int = 64  # pairs per step (each pair is two sequences)
    lr: float = 1e-4  # learning rate after warm-up (constant)
    warmup: int = 5  # steps of linear warm-up; then constant, so a curve up to step k is the same whatever `steps` is
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    grad_clip: float = 1.0  # largest gradient norm (0: no clipping)
    seed: int = 0  # the batch order (random.Random(seed)) and torch.manual_seed(seed)
    label_smoothing: float = 0.0  # cDPO's ε: the probability a label is wrong (0: plain DPO; notebook 09 uses it)

    def __post_init__(self):
        _check_beta(self.beta)
        _check_label_smoothing(self.label_smoothing)
        check_step_settings(self)


@dataclass
class DPOResult:
    """Per step (batch means), then the run's totals."""

    losses: list
    margins: list  # chosen reward - rejected reward
    accuracies: list  # share of pairs with margin > 0
    chosen_rewards: list  # beta (log pi - log pi_ref) of the chosen responses
    rejected_rewards: list
    chosen_logps: list  # the policy's summed log-probs of the chosen responses
    rejected_logps: list
    epochs: list  # passes over the pairs so far
    seconds: float  # training wall-clock, evaluations excluded
    ref_seconds: float  # precomputing the reference log-probs (0 if they were passed in, or the reference is live)
    evals: list  # [(step, eval_fn(policy)), ...], step 0 included
    beta: float
    policy_bytes: int  # the policy's weights
    reference_bytes: int  # a live reference's weights, else 0
    cache_bytes: int  # cached reference log-probs (8 bytes a pair), else 0
    peak_step_bytes: int = None  # with measure_memory: the most bytes the first step held at once (CPU allocator)


def _reference(policy, tokenizer, pairs, ref_logps, ref_model, batch_size):
    """(ref_chosen, ref_rejected, seconds to compute them) for a cached reference; (None, None, 0) for a live one."""
    if ref_logps is not None and ref_model is not None:
        raise ValueError("pass either ref_logps (cached) or ref_model (live), not both")
    if ref_model is not None and ref_model is policy:
        raise ValueError("ref_model is the policy itself; pass a frozen copy, or neither ref_model nor ref_logps "
                         "to precompute the reference from the policy before training")
    if ref_model is not None:
        ref_model.eval()
        return None, None, 0.0
    t0 = time.perf_counter()
    if ref_logps is None:
        ref_logps = precompute_reference_logprobs(policy, tokenizer, pairs, batch_size)
        return (*_check_ref_logps(ref_logps, len(pairs)), time.perf_counter() - t0)
    return (*_check_ref_logps(ref_logps, len(pairs)), 0.0)


def train_dpo(policy, tokenizer, pairs, cfg=None, ref_logps=None, ref_model=None, eval_fn=None, eval_every=None,
              progress=True, desc="DPO", measure_memory=False):
    """Train `policy` in place with DPO on `pairs`; returns a DPOResult.

    The reference is one of:
        ref_logps  (ref_chosen, ref_rejected) from `precompute_reference_logprobs` (cached), or
        ref_model  a frozen model run on every batch (live); the same losses, up to float rounding;
        neither    the policy itself before its first step, precomputed (the usual case: π_ref = π_SFT).
    Dropout is off (the models run in eval mode), as in TRL, so that at step 0 the policy and the
    reference agree exactly. eval_fn(policy) runs at step 0, every eval_every steps and at the end.
    Taught inline in notebook 08 §3 (The reference model: needed, but only once); the notebook asserts they agree."""
    cfg = DPOConfig() if cfg is None else cfg
    _check_pairs(pairs)
    ref_chosen, ref_rejected, ref_seconds = _reference(policy, tokenizer, pairs, ref_logps, ref_model, cfg.batch_size)
    sampler = BatchSampler(len(pairs), random.Random(cfg.seed))
    torch.manual_seed(cfg.seed)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt, sched = adamw(params, cfg.lr, cfg.weight_decay, cfg.warmup)
    peak = None

    def update(idx):
        policy.eval()  # dropout off; gradients still flow
        batch = [pairs[i] for i in idx]
        pc, pr = pair_logprobs(policy, tokenizer, batch)
        if ref_model is not None:
            with torch.no_grad():
                rc, rr = pair_logprobs(ref_model, tokenizer, batch)
        else:
            rc, rr = ref_chosen[idx], ref_rejected[idx]
        losses, cr, rj = dpo_loss(pc, pr, rc.to(pc), rr.to(pc), cfg.beta, cfg.label_smoothing)
        loss = losses.mean()
        optimizer_step(loss, opt, sched, params, cfg.grad_clip)
        return loss.item(), cr, rj, pc.detach(), pr.detach()

    def step(s):
        nonlocal peak
        idx = sampler.next(cfg.batch_size)
        if measure_memory and s == 0:
            out, peak = peak_memory(update, idx)
        else:
            out = update(idx)
        loss, cr, rj, pc, pr = out
        margins = cr - rj
        return {"loss": loss, "margin": margins.mean().item(), "accuracy": (margins > 0).float().mean().item(),
                "chosen_reward": cr.mean().item(), "rejected_reward": rj.mean().item(),
                "chosen_logp": pc.mean().item(), "rejected_logp": pr.mean().item(),
                "epoch": (s + 1) * cfg.batch_size / len(pairs)}

    def evaluate():
        out = eval_fn(policy)
        policy.eval()
        return out

    log = run_loop(step, cfg.steps, desc, progress, eval_fn and evaluate, eval_every, eval_at_start=True,
                   show=("loss", "margin"))
    r = log.records
    return DPOResult(r["loss"], r["margin"], r["accuracy"], r["chosen_reward"], r["rejected_reward"], r["chosen_logp"],
                     r["rejected_logp"], r["epoch"], log.seconds, ref_seconds, log.evals, cfg.beta, _nbytes(policy),
                     _nbytes(ref_model), 0 if ref_model is not None else ref_chosen.nbytes + ref_rejected.nbytes,
                     peak)
