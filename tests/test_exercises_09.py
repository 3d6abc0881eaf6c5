"""Notebook 09's exercise checks accept other correct code and name the mistakes (see exercise_harness)."""
import math

import torch

from course_lib import world as W
from exercise_harness import make_tests


# ---------------------------------------------------------------- correct, other than the notebook's solution
def soft_softmax(logp_a, logp_b):
    return torch.softmax(torch.stack([logp_a, logp_b], dim=-1), dim=-1)[..., 0]


def soft_maxshift(logp_a, logp_b):
    m = torch.maximum(logp_a, logp_b)
    ea, eb = torch.exp(logp_a - m), torch.exp(logp_b - m)
    return ea / (ea + eb)


def ai_loop(viol_a, viol_b):
    out = []
    for row_a, row_b in zip(viol_a.tolist(), viol_b.tolist()):
        ps = []
        for va, vb in zip(row_a, row_b):
            oa, ob = 1 - va, 1 - vb
            ps.append(oa / (oa + ob) if oa + ob > 0 else 0.5)
        out.append(sum(ps) / len(ps))
    return torch.tensor(out, dtype=viol_a.dtype)


def ai_nan_to_half(viol_a, viol_b):
    ok_a, ok_b = 1 - viol_a, 1 - viol_b
    p = torch.nan_to_num(ok_a / (ok_a + ok_b), nan=0.5)
    return p.mean(dim=-1)


def hard_sign(probs):
    return (torch.sign(probs - 0.5) + 1) / 2


def hard_loop(probs):
    return torch.tensor([1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5 for p in probs.flatten().tolist()],
                        dtype=probs.dtype).view(probs.shape)


def refusal_loop(prompts, responses):
    n = k = 0
    for p, r in zip(prompts, responses):
        if W.parse_request(p).lookalike:
            n += 1
            k += W.is_refusal(r)
    return k / n if n else float("nan")


def refusal_metrics(prompts, responses):
    from course_lib import metrics
    return metrics.harm_help(metrics.score(prompts, responses))["overrefusal"]


def agree_loop(gold_a, gold_b, probs):
    total, n = 0.0, 0
    for a, b, p in zip(gold_a.tolist(), gold_b.tolist(), probs.tolist()):
        if a == b:
            continue
        n += 1
        total += 0.5 if p == 0.5 else float((p > 0.5) == (a > b))
    return total / n


def agree_sign(gold_a, gold_b, probs):
    keep = gold_a != gold_b
    s = torch.sign(probs - 0.5) * torch.sign(gold_a - gold_b)       # +1 agree, -1 disagree, 0 label tie
    return ((s[keep] + 1) / 2).mean().item()


CORRECT = {
    "09.soft_label": [soft_softmax, soft_maxshift],
    "09.ai_label": [ai_loop, ai_nan_to_half],
    "09.hard_labels": [hard_sign, hard_loop],
    "09.overrefusal_rate": [refusal_loop, refusal_metrics],
    "09.label_agreement": [agree_loop, agree_sign],
}


def _refusal_rate(keep, refused=W.is_refusal):
    def fn(prompts, responses):
        rows = [r for p, r in zip(prompts, responses) if keep(W.parse_request(p))]
        return sum(map(refused, rows)) / len(rows)
    return fn


# ---------------------------------------------------------------- wrong, each with the hint it must get
WRONG = {
    "09.soft_label": [
        (lambda a, b: torch.sigmoid(b - a), "P(B)"),
        (lambda a, b: a / (a + b), "exponentiate first"),
        (lambda a, b: torch.exp(a) / (torch.exp(a) + torch.exp(b)), "underflows"),
    ],
    "09.ai_label": [
        (lambda va, vb: ((1 - va) / (2 - va - vb)).mean(-1), "NaN"),
        (lambda va, vb: (1 - va).mean(-1) / ((1 - va).mean(-1) + (1 - vb).mean(-1)), "averaged before normalising"),
        (lambda va, vb: torch.nan_to_num((1 - va) / (2 - va - vb), nan=0.0).mean(-1), "tie, ½"),
        (lambda va, vb: torch.nan_to_num(va / (va + vb), nan=0.5).mean(-1), "ok = 1 − P(breaks"),
        (lambda va, vb: torch.nan_to_num((1 - va) / (2 - va - vb), nan=0.5).mean(0), "last axis"),
    ],
    "09.hard_labels": [
        (lambda p: (p >= 0.5).to(p.dtype), "became 1"),
        (lambda p: torch.round(p), "became 0"),
        (lambda p: p > 0.5, "booleans"),
        (lambda p: (p < 0.5).to(p.dtype) + 0.5 * (p == 0.5).to(p.dtype), "inverted"),
    ],
    "09.overrefusal_rate": [
        (_refusal_rate(lambda q: True), "every prompt"),
        (_refusal_rate(lambda q: q.family == "howto"), "every how-to"),
        (_refusal_rate(lambda q: q.lookalike or q.family == "forbidden"), "forbidden requests are counted"),
        (_refusal_rate(lambda q: q.lookalike, lambda r: r == W.REFUSALS[0]), "W.is_refusal"),
        (lambda ps, rs: sum(W.is_refusal(r) for p, r in zip(ps, rs) if W.parse_request(p).lookalike), "count"),
        (_refusal_rate(lambda q: q.lookalike), "divided by zero"),
        (lambda ps, rs: (_refusal_rate(lambda q: q.lookalike)(ps, rs)
                         if any(W.parse_request(p).lookalike for p in ps) else 0.0), "undefined"),
    ],
    "09.label_agreement": [
        (lambda ga, gb, p: torch.where(p == 0.5, 0.5, ((p > 0.5) == (ga > gb)).double()).mean().item(), "gold-tied"),
        (lambda ga, gb, p: ((p > 0.5) == (ga > gb))[ga != gb].double().mean().item(), "counts half"),
        (lambda ga, gb, p: torch.where(ga > gb, p, 1 - p)[ga != gb].mean().item(), "soft agreement"),
        (lambda ga, gb, p: torch.where(p == 0.5, 0.5, ((p > 0.5) != (ga > gb)).double())[ga != gb].mean().item(),
         "inverted"),
    ],
}

test_accepts_a_correct_implementation, test_rejects_a_wrong_implementation_with_its_hint = make_tests(CORRECT, WRONG)
