"""Notebook 11's exercise checks accept other correct code and name the mistakes (see exercise_harness)."""
import torch

from course_lib import world as W
from exercise_harness import make_tests


# ---------------------------------------------------------------- correct, other than the notebook's solution
def row_fstrings(prompt, chosen, rejected):
    return dict(prompt=f"<|user|> {prompt} <|assistant|>", chosen=f" {chosen}", rejected=f" {rejected}")


def adv_loop(rewards, k):
    out = []
    for i in range(0, len(rewards), k):
        g = rewards[i:i + k]
        m = sum(g) / k
        s = (sum((x - m) ** 2 for x in g) / (k - 1)) ** 0.5
        out += [(x - m) / (s + 1e-4) for x in g]
    return torch.stack(out)


def adv_unflatten(rewards, k):
    g = rewards.unflatten(0, (-1, k))
    return ((g - g.mean(-1, keepdim=True)) / (torch.std(g, -1, correction=1, keepdim=True) + 1e-4)).flatten()


def loss_per_sequence(logp, old_logp, ref_logp, advantages, mask, beta, clip):
    total = 0
    for i in range(logp.shape[0]):
        keep = mask[i].bool()
        ratio = torch.exp(logp[i][keep] - old_logp[i][keep])
        a = advantages[i]
        surr = torch.minimum(ratio * a, torch.clamp(ratio, 1 - clip, 1 + clip) * a)
        log_rho = ref_logp[i][keep] - logp[i][keep]
        kl = torch.expm1(log_rho) - log_rho
        total = total + (-surr + beta * kl).mean()
    return total / logp.shape[0]


CORRECT = {
    "11.trl_preference_row": [row_fstrings,
                              lambda p, c, r: {"rejected": " " + r, "chosen": " " + c, "prompt": W.chat_prompt(p)}],
    "11.group_advantages": [adv_loop, adv_unflatten],
    "11.grpo_loss": [loss_per_sequence],
}

# ---------------------------------------------------------------- wrong, with the words of the hint each must get
def _surr(logp, old, adv, clip):
    ratio, a = torch.exp(logp - old), adv[:, None]
    return -torch.min(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)


def _k3(logp, ref):
    return torch.exp(ref - logp) - (ref - logp) - 1


def _per_seq(x, mask):
    return ((x * mask).sum(-1) / mask.sum(-1)).mean()


WRONG = {
    "11.trl_preference_row": [
        (lambda p, c, r: {"prompt": p, "chosen": " " + c, "rejected": " " + r}, "chat template"),
        (lambda p, c, r: {"prompt": W.chat_prompt(p), "chosen": c, "rejected": r}, "leading space"),
        (lambda p, c, r: {"prompt": W.chat_prompt(p), "chosen": f" {c} <|end|>", "rejected": f" {r} <|end|>"},
         "appear twice"),
        (lambda p, c, r: {"prompt": W.chat_prompt(p), "chosen": " " + r, "rejected": " " + c}, "swapped"),
        (lambda p, c, r: {"prompt": W.chat_prompt(p), "chosen": " " + c, "rejected": " " + r, "margin": 1.0}, "keys"),
    ],
    "11.group_advantages": [
        (lambda r, k: (r - r.mean()) / (r.std() + 1e-4), "whole batch"),
        (lambda r, k: ((r.view(-1, k) - r.view(-1, k).mean(1, keepdim=True))
                       / (r.view(-1, k).std(1, keepdim=True, unbiased=False) + 1e-4)).reshape(-1), "Bessel"),
        (lambda r, k: ((r.view(k, -1) - r.view(k, -1).mean(0)) / (r.view(k, -1).std(0) + 1e-4)).reshape(-1), "stride"),
        (lambda r, k: (r.view(-1, k) - r.view(-1, k).mean(1, keepdim=True)).reshape(-1), "not divided"),
        (lambda r, k: (r.view(-1, k) - r.view(-1, k).mean(1, keepdim=True)) / (r.view(-1, k).std(1, keepdim=True) + 1e-4),
         "shape (N,)"),
    ],
    "11.grpo_loss": [
        (lambda lp, old, ref, a, m, b, c: _per_seq(_surr(lp, old, a, c) + b * (lp - ref), m), "k1"),
        (lambda lp, old, ref, a, m, b, c: _per_seq(_surr(lp, old, a, c) - b * _k3(lp, ref), m), "subtracted"),
        (lambda lp, old, ref, a, m, b, c: ((_surr(lp, old, a, c) + b * _k3(lp, ref)) * m).sum() / m.sum(), "DAPO"),
        (lambda lp, old, ref, a, m, b, c: _per_seq(-torch.exp(lp - old) * a[:, None] + b * _k3(lp, ref), m),
         "clip is missing"),
        (lambda lp, old, ref, a, m, b, c: (_surr(lp, old, a, c) + b * _k3(lp, ref)).mean(), "mask is ignored"),
        (lambda lp, old, ref, a, m, b, c: (_per_seq(_surr(lp, old, a, c) + b * _k3(lp, ref), m), None), "scalar loss only"),
        (lambda lp, old, ref, a, m, b, c: _per_seq(_surr(lp, old, a, c) + b * _k3(lp, ref), m).detach(), "no gradient"),
    ],
}

test_accepts_a_correct_implementation, test_rejects_a_wrong_implementation_with_its_hint = make_tests(CORRECT, WRONG)
