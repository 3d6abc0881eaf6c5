"""Direct Preference Optimisation (Rafailov et al. 2023, Eq. 7): preferences as classification.

For a prompt x with a chosen response y_w and a rejected one y_l,

    loss = -log σ( β [ (log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) - log π_ref(y_l|x)) ] )

where log π(y|x) is summed over the response tokens only (prompt and padding masked, as in
`training.sequence_logprobs`). β (log π - log π_ref) is the policy's implicit reward; the loss
is Bradley-Terry on the two rewards. There is no reward model and no sampling, but the
reference π_ref is needed: its log-probs of every chosen and rejected response. They never
change, so `precompute_reference_logprobs` computes them once before training, and the
reference model need not be held while the policy trains.

A pair is a dict {"prompt", "chosen", "rejected"} of strings, in the chat format of
`sft.sft_example`; other keys (annotator, ...) are ignored.
"""
import math
import numbers
import random
import time

import torch
import torch.nn.functional as F

from .training import sequence_logprobs


def _check_beta(beta):
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta <= 0:
        raise ValueError(f"beta must be a finite number > 0 (the strength of the pull towards the reference), "
                         f"got {beta!r}")
    return float(beta)


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Per-pair DPO losses and implicit rewards.

    Each input is (N,): one summed response log-probability per pair. Returns
    (losses, chosen_rewards, rejected_rewards), each (N,):
        losses           = -logsigmoid(β ((πc - rc) - (πr - rr)))
        chosen_rewards   = β (πc - rc), detached      (the margin is chosen_rewards - rejected_rewards)
        rejected_rewards = β (πr - rr), detached
    At policy == reference every loss is ln 2 and every reward 0."""
    beta = _check_beta(beta)
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
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # log π/π_ref (y_w)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # log π/π_ref (y_l)
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
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
    logps = sequence_logprobs(model, tokenizer, prompts, responses, batch_size=len(prompts))
    return logps[:len(pairs)], logps[len(pairs):]


@torch.no_grad()
def precompute_reference_logprobs(ref_model, tokenizer, pairs, batch_size=64):
    """The reference's (chosen, rejected) log-probs for every pair, each (N,), computed once without
    gradients. Keep these two tensors (8 bytes a pair) and the reference model can be let go."""
    _check_pairs(pairs)
    ref_model.eval()
    chosen, rejected = [], []
    for i in range(0, len(pairs), batch_size):
        c, r = pair_logprobs(ref_model, tokenizer, pairs[i:i + batch_size])
        chosen.append(c)
        rejected.append(r)
    return torch.cat(chosen).float().cpu(), torch.cat(rejected).float().cpu()


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


def train_dpo(policy, tokenizer, pairs, ref_logps=None, ref_model=None, beta=0.1, steps=50, batch_size=64, lr=1e-4,
              seed=0, warmup=5, weight_decay=0.0, grad_clip=1.0, progress=True, desc="DPO", log_every=10,
              eval_fn=None, eval_every=None, measure_memory=False):
    """Train `policy` in place with DPO on `pairs` for `steps` AdamW steps of `batch_size` pairs.

    The reference is one of:
        ref_logps  (ref_chosen, ref_rejected) from `precompute_reference_logprobs` (cached), or
        ref_model  a frozen model run on every batch (live); the same losses, up to float rounding;
        neither    the policy itself before its first step, precomputed (the usual case: π_ref = π_SFT).
    The learning rate warms up linearly for `warmup` steps, then stays constant, so a curve up to
    step k is the same whatever `steps` is. Dropout is off (the models run in eval mode), as in
    TRL, so that at step 0 the policy and the reference agree exactly.

    eval_fn(policy) runs at step 0, every `eval_every` steps and at the end; its time is not in
    "seconds". Returns, per step (batch means): "losses", "margins" (chosen - rejected reward),
    "accuracies" (fraction of pairs with margin > 0), "chosen_rewards", "rejected_rewards",
    "chosen_logps", "rejected_logps" (the policy's summed log-probs), "epochs"; and "seconds"
    (training), "ref_seconds" (precomputing the reference), "evals" [(step, value), ...],
    "policy_bytes", "reference_bytes" (weights of a live reference, else 0), "cache_bytes"
    (cached reference log-probs), "peak_step_bytes" (with measure_memory: the most bytes the
    first step allocated at once, CPU allocator, via `flash.peak_memory`, which slows that step;
    else None)."""
    _check_pairs(pairs)
    beta = _check_beta(beta)
    if ref_logps is not None and ref_model is not None:
        raise ValueError("pass either ref_logps (cached) or ref_model (live), not both")
    if ref_model is not None and ref_model is policy:
        raise ValueError("ref_model is the policy itself; pass a frozen copy, or neither ref_model nor ref_logps "
                         "to precompute the reference from the policy before training")
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got steps={steps}, batch_size={batch_size}")
    ref_seconds = 0.0
    if ref_model is None:
        if ref_logps is None:
            t0 = time.perf_counter()
            ref_logps = precompute_reference_logprobs(policy, tokenizer, pairs, batch_size)
            ref_seconds = time.perf_counter() - t0
        ref_chosen, ref_rejected = _check_ref_logps(ref_logps, len(pairs))
    else:
        ref_model.eval()

    rng = random.Random(seed)
    torch.manual_seed(seed)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    policy.eval()  # dropout off; gradients still flow

    def step(idx):
        batch = [pairs[i] for i in idx]
        pc, pr = pair_logprobs(policy, tokenizer, batch)
        if ref_model is not None:
            with torch.no_grad():
                rc, rr = pair_logprobs(ref_model, tokenizer, batch)
        else:
            rc, rr = ref_chosen[idx], ref_rejected[idx]
        losses, chosen_rewards, rejected_rewards = dpo_loss(pc, pr, rc.to(pc), rr.to(pc), beta)
        loss = losses.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        sched.step()
        return loss.item(), chosen_rewards, rejected_rewards, pc.detach(), pr.detach()

    keys = ["losses", "margins", "accuracies", "chosen_rewards", "rejected_rewards", "chosen_logps",
            "rejected_logps", "epochs"]
    log = {k: [] for k in keys}
    evals, eval_seconds, peak = [], 0.0, None

    def run_eval(at):
        nonlocal eval_seconds
        t = time.perf_counter()
        evals.append((at, eval_fn(policy)))
        policy.eval()
        eval_seconds += time.perf_counter() - t

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, leave=False)
    order, pos = [], 0
    t0 = time.perf_counter()
    if eval_fn is not None and eval_every:
        run_eval(0)
    for s in range(steps):
        idx = []
        while len(idx) < batch_size:
            if pos == len(order):
                order, pos = rng.sample(range(len(pairs)), len(pairs)), 0
            idx.append(order[pos])
            pos += 1
        if measure_memory and s == 0:
            from .flash import peak_memory

            out, peak = peak_memory(step, idx)
        else:
            out = step(idx)
        loss, cr, rr, pc, pr = out
        margins = cr - rr
        for k, v in zip(keys, [loss, margins.mean().item(), (margins > 0).float().mean().item(), cr.mean().item(),
                               rr.mean().item(), pc.mean().item(), pr.mean().item(),
                               (s + 1) * batch_size / len(pairs)]):
            log[k].append(v)
        if bar is not None:
            bar.update(1)
            if s % log_every == 0:
                bar.set_postfix(loss=f"{loss:.3f}", margin=f"{log['margins'][-1]:.2f}")
        if eval_fn is not None and eval_every and ((s + 1) % eval_every == 0 or s + 1 == steps):
            run_eval(s + 1)
    seconds = time.perf_counter() - t0 - eval_seconds
    if bar is not None:
        bar.close()
    log.update({"seconds": seconds, "ref_seconds": ref_seconds, "evals": evals, "beta": beta,
                "policy_bytes": _nbytes(policy), "reference_bytes": _nbytes(ref_model),
                "cache_bytes": 0 if ref_model is not None else ref_chosen.nbytes + ref_rejected.nbytes,
                "peak_step_bytes": peak})
    return log
