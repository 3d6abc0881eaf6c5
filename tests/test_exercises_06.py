"""Notebook 06's exercises: each check accepts other correct implementations and names plausible mistakes."""
import math

import torch
import torch.nn.functional as F

from exercise_harness import make_tests


# ------------------------------------------------------------------ correct, but not the notebook's code
def pairs_loops(ranking):
    out = []
    for i in range(len(ranking)):
        for j in range(i + 1, len(ranking)):
            out.append((ranking[i], ranking[j]))
    return out


def pairs_reverse_order(ranking):  # same pairs, listed worst-first: the order of the pairs is free
    return [(ranking[i], ranking[j]) for j in reversed(range(len(ranking))) for i in range(j)]


def agreement_formula():
    return 0.8 * 0.8 + 0.2 * 0.2


def agreement_rounded():
    return 0.68


def kappa_counts(x, y):
    n = len(x)
    both1 = sum(a and b for a, b in zip(x, y))
    both0 = sum((not a) and (not b) for a, b in zip(x, y))
    po = (both1 + both0) / n
    pe = (sum(x) / n) * (sum(y) / n) + (1 - sum(x) / n) * (1 - sum(y) / n)
    return (po - pe) / (1 - pe)


def kappa_torch(x, y):
    x, y = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    po = (x == y).double().mean()
    pe = x.mean() * y.mean() + (1 - x.mean()) * (1 - y.mean())
    return ((po - pe) / (1 - pe)).item()


def bt_softplus(r_chosen, r_rejected):
    return F.softplus(r_rejected - r_chosen).mean()  # -log sigma(d) = log(1 + exp(-d))


def bt_logaddexp(r_chosen, r_rejected):
    d = r_chosen - r_rejected
    return torch.logaddexp(torch.zeros_like(d), -d).sum() / d.numel()


def acc_sign(r_chosen, r_rejected):
    return ((torch.sign(r_chosen - r_rejected) + 1) / 2).mean().item()


def acc_loop(r_chosen, r_rejected):
    s = 0.0
    for c, r in zip(r_chosen.flatten().tolist(), r_rejected.flatten().tolist()):
        s += 1.0 if c > r else 0.5 if c == r else 0.0
    return s / r_chosen.numel()


CORRECT = {
    "06.pairs_from_ranking": [pairs_loops, pairs_reverse_order],
    "06.predict_agreement": [agreement_formula, agreement_rounded],
    "06.cohen_kappa": [kappa_counts, kappa_torch],
    "06.bradley_terry_loss": [bt_softplus, bt_logaddexp],
    "06.preference_accuracy": [acc_sign, acc_loop],
}

# ------------------------------------------------------------------ plausible mistakes
WRONG = {
    "06.pairs_from_ranking": [
        (lambda ranking: [(ranking[j], ranking[i]) for i in range(len(ranking)) for j in range(i + 1, len(ranking))],
         "reversed"),
        (lambda ranking: list(zip(ranking, ranking[1:])), "only neighbours"),
        (lambda ranking: [(a, b) for a in ranking for b in ranking if a != b], "both orders"),
        (lambda ranking: [(a, b) for a in ranking for b in ranking], "itself"),
    ],
    "06.predict_agreement": [
        (lambda: 0.8, "each annotator's agreement with the gold"),
        (lambda: 0.64, "both are wrong"),
        (lambda: 68, "percentage"),
        (lambda: 0.5, "both are right or both are wrong"),
    ],
    "06.cohen_kappa": [
        (lambda x, y: sum(a == b for a, b in zip(x, y)) / len(x), "percent agreement"),
        (lambda x, y: (sum(a == b for a, b in zip(x, y)) / len(x) - 0.5) / 0.5, "taken as 0.5"),
        (lambda x, y: ((sum(a == b for a, b in zip(x, y)) / len(x)) - sum(x) * sum(y) / len(x) ** 2)
         / (1 - sum(x) * sum(y) / len(x) ** 2), "both say 0"),
    ],
    "06.bradley_terry_loss": [
        (lambda c, r: -F.logsigmoid(r - c).mean(), "swapped"),
        (lambda c, r: -F.logsigmoid(c - r).sum(), "the sum"),
        (lambda c, r: F.logsigmoid(c - r).mean(), "sign is missing"),
        (lambda c, r: -(torch.sigmoid(c) - torch.sigmoid(r)).mean(), "not a probability"),
        (lambda c, r: -torch.log(torch.sigmoid(c) - torch.sigmoid(r)).mean(), "nan"),
        (lambda c, r: -torch.log(torch.sigmoid(c - r)).mean(), "underflows"),
        (lambda c, r: (-F.logsigmoid(c) - F.logsigmoid(-r)).mean(), "on its own"),
    ],
    "06.preference_accuracy": [
        (lambda c, r: (c > r).float().mean().item(), "ties count as wrong"),
        (lambda c, r: (c >= r).float().mean().item(), "ties count as right"),
        (lambda c, r: ((c < r).float() + 0.5 * (c == r).float()).mean().item(), "swapped"),
        (lambda c, r: ((c > r).float() + 0.5 * (c == r).float()).sum().item(), "count"),
    ],
}

test_accepts_a_correct_implementation, test_rejects_a_wrong_implementation_with_its_hint = make_tests(CORRECT, WRONG)
