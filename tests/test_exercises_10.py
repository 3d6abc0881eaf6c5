"""Notebook 10's exercise checks accept other correct code and name the mistakes (see exercise_harness)."""
import math
import statistics

import torch

from exercise_harness import make_tests


# ---------------------------------------------------------------- correct, other than the notebook's solution
def win_loop(scores, baseline_scores):
    total = 0.0
    for a, b in zip(scores.tolist(), baseline_scores.tolist()):
        total += 1.0 if a > b else 0.5 if a == b else 0.0
    return total / len(scores)


def win_sign(scores, baseline_scores):
    return ((torch.sign(scores - baseline_scores) + 1) / 2).double().mean().item()


def paired_statistics(a, b, z=1.96):
    d = [y - x for x, y in zip(a.tolist(), b.tolist())]
    m, s = statistics.fmean(d), statistics.stdev(d)
    return m, m - z * s / math.sqrt(len(d)), m + z * s / math.sqrt(len(d))


def paired_manual(a, b, z=1.96):
    d = (b - a).double()
    n = d.numel()
    m = d.sum() / n
    se = torch.sqrt(((d - m) ** 2).sum() / (n - 1) / n)
    return m.item(), (m - z * se).item(), (m + z * se).item()


def verdict_match(lo, hi):
    if lo > 0:
        return "better"
    if hi < 0:
        return "worse"
    return "inconclusive"


def verdict_lib(lo, hi):
    from course_lib import metrics
    return {"up": "better", "down": "worse"}.get(metrics.verdict(lo, hi, "up", "down"), "inconclusive")


def pareto_sort(points):
    # sweep: sort by harmlessness (desc), then helpfulness (desc); keep a point that beats the best helpfulness so far
    order = sorted(points, key=lambda n: (-points[n][0], -points[n][1]))
    keep, best_y, best_x = set(), -math.inf, None
    for n in order:
        x, y = points[n]
        if y > best_y or (y == best_y and x == best_x):
            keep.add(n)
            if y > best_y:
                best_y, best_x = y, x
    return [n for n in points if n in keep]


def pareto_tensor(points):
    names = list(points)
    p = torch.tensor([points[n] for n in names], dtype=torch.float64)          # (M, 2)
    ge = (p[:, None, :] >= p[None, :, :]).all(-1)                             # ge[o, n]: o at least as good as n
    gt = (p[:, None, :] > p[None, :, :]).any(-1)
    dominated = (ge & gt).any(0)
    return [n for n, d in zip(names, dominated.tolist()) if not d]


CORRECT = {
    "10.win_rate": [win_loop, win_sign],
    "10.paired_difference": [paired_statistics, paired_manual],
    "10.verdict": [verdict_match, verdict_lib],
    "10.pareto_front": [pareto_sort, pareto_tensor],
    "10.predict_self_win_rate": [lambda: 0.5, lambda: 1 / 2],
}


def _paired(se, sign=1, z_used=True):
    def fn(a, b, z=1.96):
        d = (b - a).double() * sign
        m = d.mean().item()
        h = (z if z_used else 1.0) * se(a.double(), b.double(), d)
        return m, m - h, m + h
    return fn


# ---------------------------------------------------------------- wrong, each with the hint it must get
WRONG = {
    "10.win_rate": [
        (lambda s, b: (s > b).double().mean().item(), "ties counted as losses"),
        (lambda s, b: (s >= b).double().mean().item(), "ties counted as wins"),
        (lambda s, b: (s > b)[s != b].double().mean().item(), "ties were dropped"),
        (lambda s, b: ((b > s).double() + 0.5 * (s == b).double()).mean().item(), "baseline's win rate"),
    ],
    "10.paired_difference": [
        (_paired(lambda a, b, d: d.std().item() / math.sqrt(len(d)), sign=-1), "a − b"),
        (_paired(lambda a, b, d: math.sqrt(a.var().item() / len(a) + b.var().item() / len(b))), "ignores the pairing"),
        (_paired(lambda a, b, d: d.std().item()), "standard error"),
        (_paired(lambda a, b, d: d.std().item() / math.sqrt(len(d)), z_used=False), "z is missing"),
        (_paired(lambda a, b, d: d.std(unbiased=False).item() / math.sqrt(len(d))), "population standard deviation"),
    ],
    "10.verdict": [
        (lambda lo, hi: "better" if lo >= 0 else "worse" if hi <= 0 else "inconclusive", "touches 0"),
        (lambda lo, hi: "better" if (lo + hi) / 2 > 0 else "worse", "interval's ends"),
        (lambda lo, hi: "worse" if lo > 0 else "better" if hi < 0 else "inconclusive", "swapped"),
    ],
    "10.pareto_front": [
        (lambda pts: [n for n in pts if not any(pts[o][0] >= pts[n][0] and pts[o][1] >= pts[n][1]
                                                for o in pts if o != n)], "strictly better"),
        (lambda pts: [n for n in pts if not any(pts[o][0] > pts[n][0] and pts[o][1] > pts[n][1]
                                                for o in pts if o != n)], "ties on one axis"),
        (lambda pts: [n for n in pts if pts[n][0] == max(p[0] for p in pts.values())
                      or pts[n][1] == max(p[1] for p in pts.values())], "best method of each axis"),
        (lambda pts: sorted(pareto_tensor(pts)), "dict's order"),
    ],
    "10.predict_self_win_rate": [
        (lambda: 0.0, "a tie counts half"),
        (lambda: 1.0, "a tie counts half"),
    ],
}

test_accepts_a_correct_implementation, test_rejects_a_wrong_implementation_with_its_hint = make_tests(CORRECT, WRONG)
