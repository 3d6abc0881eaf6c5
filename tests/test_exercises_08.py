"""Notebook 08's exercise checks accept other correct code and name the mistakes (see exercise_harness)."""
import math

import torch
import torch.nn.functional as F

from exercise_harness import make_tests


# ---------------------------------------------------------------- correct, other than the notebook's solution
def reward_einsum(policy_logps, ref_logps, beta):
    return torch.lerp(torch.zeros_like(policy_logps), policy_logps - ref_logps, beta)  # beta * (pi - ref)


def reward_log_ratio(policy_logps, ref_logps, beta):
    return beta * torch.log(torch.exp(policy_logps.double() - ref_logps.double())).to(policy_logps.dtype)


def dpo_softplus(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    pi = policy_chosen_logps - policy_rejected_logps
    ref = ref_chosen_logps - ref_rejected_logps
    return F.softplus(-beta * (pi - ref))           # -log sigma(x) = softplus(-x), TRL's grouping of the terms


def dpo_loop(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    flat = [t.reshape(-1) for t in (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)]
    out = []
    for pc, pr, rc, rr in zip(*flat):
        m = beta * ((pc - rc) - (pr - rr))
        out.append(torch.clamp(-m, min=0) + torch.log1p(torch.exp(-m.abs())))   # stable softplus(-m), by hand
    return torch.stack(out).reshape(policy_chosen_logps.shape)


def weight_one_minus(chosen_rewards, rejected_rewards):
    return 1 - torch.sigmoid(chosen_rewards - rejected_rewards)


def weight_exp(chosen_rewards, rejected_rewards):
    return 1 / (1 + torch.exp(chosen_rewards - rejected_rewards))


def ipo_trl(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, tau):
    logits = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    return (logits - 1 / (2 * tau)) ** 2


def ipo_expanded(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, tau):
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    t = 0.5 / tau
    return h * h - 2 * t * h + t * t


CORRECT = {
    "08.implicit_reward": [reward_einsum, reward_log_ratio],
    "08.dpo_loss": [dpo_softplus, dpo_loop],
    "08.dpo_gradient_weight": [weight_one_minus, weight_exp],
    "08.ipo_loss": [ipo_trl, ipo_expanded],
    "08.predict_initial_loss": [lambda: 0.693, lambda: math.log(2)],
}

# ---------------------------------------------------------------- wrong, each with the hint it must get
WRONG = {
    "08.implicit_reward": [
        (lambda p, r, b: b * (r - p), "sign is flipped"),
        (lambda p, r, b: p - r, "β is missing"),
        (lambda p, r, b: (p - r) / b, "β divides"),
    ],
    "08.dpo_loss": [
        (lambda pc, pr, rc, rr, b: -F.logsigmoid(b * ((pr - rr) - (pc - rc))), "chosen and rejected are swapped"),
        (lambda pc, pr, rc, rr, b: -F.logsigmoid((pc - rc) - (pr - rr)), "β is missing"),
        (lambda pc, pr, rc, rr, b: -b * F.logsigmoid((pc - rc) - (pr - rr)), "outside the log σ"),
        (lambda pc, pr, rc, rr, b: -F.logsigmoid(b * ((pc + rc) - (pr + rr))), "reference terms have the wrong sign"),
        (lambda pc, pr, rc, rr, b: -F.logsigmoid(b * ((pc - rc) - (pr - rr))).mean(), "per-pair losses"),
        (lambda pc, pr, rc, rr, b: -torch.log(torch.sigmoid(b * ((pc - rc) - (pr - rr)))), "F.logsigmoid"),
        (lambda pc, pr, rc, rr, b: (-F.logsigmoid(b * ((pc - rc) - (pr - rr))), b * (pc - rc), b * (pr - rr)),
         "tuple"),
        (lambda pc, pr, rc, rr, b: -F.logsigmoid(b * ((pc - rc) - (pr - rr)).detach()), "no gradient"),
    ],
    "08.dpo_gradient_weight": [
        (lambda c, r: torch.sigmoid(c - r), "σ(−m)"),
        (lambda c, r: -F.logsigmoid(c - r), "that is the loss"),
        (lambda c, r: torch.sigmoid(-0.1 * (c - r)), "β is applied twice"),
    ],
    "08.ipo_loss": [
        (lambda pc, pr, rc, rr, t: ((pr - rr) - (pc - rc) - 1 / (2 * t)) ** 2, "swapped"),
        (lambda pc, pr, rc, rr, t: ((pc - rc) - (pr - rr) - 1 / t) ** 2, "1/(2τ)"),
        (lambda pc, pr, rc, rr, t: ((pc - rc) - (pr - rr) - 1 / (2 * t)), "not squared"),
        (lambda pc, pr, rc, rr, t: (((pc - rc) - (pr - rr) - 1 / (2 * t)) ** 2).mean(), "per-pair losses"),
    ],
    "08.predict_initial_loss": [
        (lambda: 0.0, "−log ½"),
        (lambda: 0.5, "σ(0)"),
        (lambda: 0.1 * math.log(2), "β drops out"),
    ],
}

test_accepts_a_correct_implementation, test_rejects_a_wrong_implementation_with_its_hint = make_tests(CORRECT, WRONG)
