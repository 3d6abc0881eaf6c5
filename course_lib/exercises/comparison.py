"""Exercises of notebook 10 (the method comparison). The verdict's twin is course_lib.metrics.verdict and the
paired interval's is compared with course_lib.metrics.paired_bootstrap; the win rate (inline in notebook 10's
``measure`` until now), the normal interval and the Pareto front have no library twin: their references are
written here."""
import math

import torch

from . import Wrong, exercise, expect_close, expect_number
from .. import metrics as M

NB = "10_method_comparison"
_g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731


def _number(x, what):
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise Wrong(f"{what} should be a number (a float), got {type(x).__name__}")
    return float(x)


# ------------------------------------------------------------------ 10.predict_self_win_rate
def _self_win_rate():
    s = torch.rand(248, generator=_g(50), dtype=torch.float64).round(decimals=1)
    return _win_rate_ref(s, s.clone())


predict_ex = exercise(
    "10.predict_self_win_rate", notebook=NB, stars=1, minutes=2, kind="predict",
    signature="predict_self_win_rate() -> float",
    task="Before the table: a method that gives exactly the SFT model's response to every prompt is judged against "
         "the SFT model by the paired win rate. What win rate does it get? (A method that merely equals the baseline "
         "should sit where?) The check computes it.",
    hint="Every prompt is a tie, and a tie counts half.",
    reference=lambda: 0.5)


@predict_ex.check
def _predict_self(fn):
    expect_number(fn(), _self_win_rate(), "your predicted win rate of SFT against itself", rel=1e-3, mistakes=[
        (0.0, "no prompt is lost either: every prompt is a tie, and a tie counts half"),
        (1.0, "no prompt is won either: every prompt is a tie, and a tie counts half")],
        otherwise="Every prompt is a tie.")


# ------------------------------------------------------------------ 10.win_rate
def _win_rate_ref(scores, baseline_scores):
    s, b = torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(baseline_scores, dtype=torch.float64)
    wins = (s > b).sum().item() + 0.5 * (s == b).sum().item()
    return wins / len(s)


win_ex = exercise(
    "10.win_rate", notebook=NB, stars=1, minutes=4,
    signature="win_rate(scores, baseline_scores) -> float",
    task="The paired win rate of a method against a baseline: scores and baseline_scores are (N,) tensors, the gold "
         "reward of each one's response to the same N prompts. A prompt counts 1 where the method scores higher, "
         "½ for a tie, 0 where it scores lower; return the mean.",
    hint="((scores > baseline_scores) + 0.5 · (scores == baseline_scores)) summed, divided by N. Ties are common "
         "(the gold reward takes few values): dropping them or counting them as losses moves the rate a lot.",
    reference=_win_rate_ref)


@win_ex.check
def _win_values(fn):
    s = torch.tensor([1.0, 0.5, 1.75, 0.0, 1.25, 1.0, 0.75, 1.75, -1.0, 1.5])
    b = torch.tensor([0.5, 0.5, 1.75, 1.0, 1.25, 0.25, 0.75, 1.5, 0.0, 1.5])
    want = _win_rate_ref(s, b)  # 3 wins, 5 ties, 2 losses: 0.55
    wins, ties, n = (s > b).sum().item(), (s == b).sum().item(), len(s)
    expect_number(_number(fn(s, b), "win_rate"), want, "win_rate of 10 paired scores (5 ties)", mistakes=[
        (wins / n, "ties counted as losses: a tie is worth ½"),
        ((wins + ties) / n, "ties counted as wins: a tie is worth ½"),
        (wins / (n - ties), "ties were dropped from the count: keep every prompt, a tie worth ½"),
        (1 - want, "that is the baseline's win rate: count the prompts where `scores` beat `baseline_scores`"),
        ((s - b).mean().item(), "that is the mean difference of the scores: count wins (1), ties (½) and losses (0)"),
        (wins + 0.5 * ties, "that is the number of wins, not the rate: divide by the number of prompts")])


@win_ex.check
def _win_identical(fn):
    s = torch.rand(20, generator=_g(1), dtype=torch.float64)
    expect_number(_number(fn(s, s.clone()), "win_rate"), 0.5, "win_rate of a method against itself (every prompt tied)")
    expect_number(_number(fn(s + 1, s), "win_rate"), 1.0, "win_rate when every score is higher (float64)")


# ------------------------------------------------------------------ 10.paired_difference
def _paired_ref(a, b, z=1.96):
    d = torch.as_tensor(b, dtype=torch.float64) - torch.as_tensor(a, dtype=torch.float64)
    mean = d.mean().item()
    half = z * d.std(unbiased=True).item() / math.sqrt(len(d))
    return mean, mean - half, mean + half


paired_ex = exercise(
    "10.paired_difference", notebook=NB, stars=3, minutes=8,
    signature="paired_difference(a, b, z=1.96) -> (mean, lo, hi)",
    task="a and b are (N,) tensors of scores of two methods on the same N prompts. Return the mean paired difference "
         "b − a and its 95% normal interval mean ± z·s/√N, s the sample standard deviation of the N differences "
         "(N − 1 in its denominator): three floats.",
    hint="Pair first: d = b − a, one difference per prompt; then d.mean() and d.std() (torch's default is the sample "
         "standard deviation). The standard error of a mean is s/√N. Pairing removes the prompt-to-prompt spread "
         "both methods share: an interval from the two means' separate errors is much wider.",
    reference=_paired_ref)


def _paired_mistakes(a, b, z=1.96):
    a64, b64 = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    d, n = b64 - a64, len(a)
    m, s = d.mean().item(), d.std().item()
    unpaired = math.sqrt(a64.var().item() / n + b64.var().item() / n)
    return [((-m, -m - z * s / math.sqrt(n), -m + z * s / math.sqrt(n)), "the difference is a − b: it is b − a "
                                                                        "(the second method minus the first)"),
            ((m, m - z * unpaired, m + z * unpaired), "the interval ignores the pairing (the two means' separate "
                                                      "errors): take the standard deviation of the differences b − a"),
            ((m, m - z * s, m + z * s), "the interval uses the standard deviation, not the standard error: "
                                        "divide it by √N"),
            ((m, m - s / math.sqrt(n), m + s / math.sqrt(n)), "z is missing: the 95% interval is mean ± z·s/√N"),
            ((m, m - z * d.std(unbiased=False).item() / math.sqrt(n), m + z * d.std(unbiased=False).item() / math.sqrt(n)),
             "the population standard deviation (N in its denominator): use the sample one, N − 1"),
            ((m, m - z * s / n, m + z * s / n), "divided by N: the standard error is s/√N")]


def _paired_case(fn, a, b, z, what):
    out = fn(a, b, z) if z != 1.96 else fn(a, b)
    try:
        got = tuple(_number(x, what) for x in out)
    except TypeError:
        raise Wrong(f"{what}: return three numbers (mean, lo, hi), got {type(out).__name__}") from None
    if len(got) != 3:
        raise Wrong(f"{what}: return three numbers (mean, lo, hi), got {len(got)}")
    want = torch.tensor(_paired_ref(a, b, z), dtype=torch.float64)
    expect_close(torch.tensor(got, dtype=torch.float64), want, what, atol=1e-9, rtol=1e-7,
                 mistakes=[(torch.tensor(w, dtype=torch.float64), h) for w, h in _paired_mistakes(a, b, z)])


@paired_ex.check
def _paired_values(fn):
    g = _g(10)
    prompt = torch.rand(12, generator=g, dtype=torch.float64) * 1.5       # what both methods share per prompt
    a = prompt + 0.1 * torch.randn(12, generator=g, dtype=torch.float64)
    b = prompt + 0.15 + 0.1 * torch.randn(12, generator=g, dtype=torch.float64)
    _paired_case(fn, a, b, 1.96, "paired_difference of 12 paired scores")


@paired_ex.check
def _paired_z(fn):
    g = _g(11)
    a = torch.randn(30, generator=g).float()
    b = (a + 0.3 * torch.randn(30, generator=g)).float()
    _paired_case(fn, a, b, 2.576, "paired_difference of 30 float32 scores with z=2.576 (a 99% interval)")


@paired_ex.check
def _paired_bootstrap(fn):
    g = _g(12)
    a = torch.randint(0, 8, (400,), generator=g).double() / 4
    b = (a + torch.randint(-1, 3, (400,), generator=g).double() / 4).clamp(max=1.75)
    m, lo, hi = (_number(x, "paired_difference") for x in fn(a, b))
    bm, blo, bhi = M.paired_bootstrap(a.tolist(), b.tolist())
    expect_number(m, bm, "the mean of paired_difference vs course_lib.metrics.paired_bootstrap's", rel=1e-9)
    if not (abs(lo - blo) < 0.02 and abs(hi - bhi) < 0.02):
        raise Wrong(f"on 400 prompts the normal interval [{lo:.3f}, {hi:.3f}] should be close to the bootstrap's "
                    f"[{blo:.3f}, {bhi:.3f}]: check the standard error, s/√N")


# ------------------------------------------------------------------ 10.verdict
def _verdict_ref(lo, hi):
    words = M.verdict(lo, hi, "better", "worse")
    return words if words in ("better", "worse") else "inconclusive"


verdict_ex = exercise(
    "10.verdict", notebook=NB, stars=1, minutes=3,
    signature="verdict(lo, hi) -> 'better' | 'worse' | 'inconclusive'",
    task="What a 95% interval [lo, hi] of a difference b − a allows you to say: \"better\" if it lies entirely above "
         "0, \"worse\" if entirely below, else \"inconclusive\" (the interval includes 0).",
    hint="Only the interval decides, never the point estimate: lo > 0 → better, hi < 0 → worse, otherwise "
         "inconclusive — an interval that touches 0 (lo == 0) includes it.",
    reference=_verdict_ref)


@verdict_ex.check
def _verdict_cases(fn):
    cases = [((0.05, 0.3), "better"), ((-0.4, -0.01), "worse"), ((-0.1, 0.2), "inconclusive"),
             ((-0.3, 0.05), "inconclusive"), ((0.0, 0.2), "inconclusive"), ((-0.2, 0.0), "inconclusive")]
    for (lo, hi), want in cases:
        got = fn(lo, hi)
        if got not in ("better", "worse", "inconclusive"):
            raise Wrong(f"verdict({lo}, {hi}) returned {got!r}: return one of 'better', 'worse', 'inconclusive'")
        if got == want:
            continue
        if want == "inconclusive" and 0.0 in (lo, hi):
            raise Wrong(f"verdict({lo}, {hi}) said {got!r}: an interval that touches 0 includes it — use strict "
                        "comparisons, lo > 0 and hi < 0")
        if want == "inconclusive":
            raise Wrong(f"verdict({lo}, {hi}) said {got!r}: the interval includes 0, so the data allow either sign "
                        "— judge by the interval's ends (lo > 0, hi < 0), not by its middle")
        if {got, want} == {"better", "worse"}:
            raise Wrong(f"verdict({lo}, {hi}) said {got!r}: 'better' and 'worse' are swapped — an interval above 0 "
                        "means b − a > 0, b better")
        raise Wrong(f"verdict({lo}, {hi}) said {got!r}, expected {want!r}: lo > 0 → better, hi < 0 → worse")


# ------------------------------------------------------------------ 10.pareto_front
def _pareto_ref(points):
    names = list(points)

    def dominated(n):
        x, y = points[n]
        return any(points[o][0] >= x and points[o][1] >= y and (points[o][0] > x or points[o][1] > y)
                   for o in names if o != n)
    return [n for n in names if not dominated(n)]


pareto_ex = exercise(
    "10.pareto_front", notebook=NB, stars=2, minutes=6,
    signature="pareto_front(points) -> list of names",
    task="points maps each method's name to (harmlessness, helpfulness), both higher-is-better. Return the names of "
         "the Pareto-optimal methods, in the dict's order: those no other method dominates (at least as good on both "
         "axes and strictly better on one).",
    hint="For each name, look for another point with x' ≥ x and y' ≥ y and (x' > x or y' > y); keep the name if "
         "there is none. Two methods with the same point do not dominate each other: both stay.",
    reference=_pareto_ref)


@pareto_ex.check
def _pareto_values(fn):
    pts = {"sft": (0.90, 0.50), "ppo": (0.80, 0.55), "dpo": (0.85, 0.70), "cai": (0.95, 0.40),
           "base": (0.30, 0.45), "cai_2": (0.95, 0.40), "dpo_b": (0.85, 0.60)}
    want = _pareto_ref(pts)  # dpo, cai, cai_2, sft
    got = fn(dict(pts))
    if not isinstance(got, (list, tuple)):
        raise Wrong(f"pareto_front returned {type(got).__name__}: return a list of names")
    got = list(got)
    if got == want:
        return
    if set(got) == set(want):
        raise Wrong(f"pareto_front gave the right methods in another order ({got}): keep the dict's order")
    names = list(pts)
    weak = [n for n in names if not any(pts[o][0] >= pts[n][0] and pts[o][1] >= pts[n][1] for o in names if o != n)]
    strict = [n for n in names if not any(pts[o][0] > pts[n][0] and pts[o][1] > pts[n][1] for o in names if o != n)]
    extremes = [n for n in names if pts[n][0] == max(p[0] for p in pts.values()) or pts[n][1] == max(p[1] for p in pts.values())]
    lowest = _pareto_ref({n: (-x, -y) for n, (x, y) in pts.items()})
    if got == weak:
        raise Wrong("two methods with the same point knocked each other out: 'dominates' needs strictly better on at "
                    "least one axis (x' > x or y' > y)")
    if got == strict:
        raise Wrong("a method that ties on one axis and is worse on the other was kept: it is dominated — another "
                    "point at least as good on both and strictly better on one")
    if got == extremes:
        raise Wrong("only the best method of each axis was kept: a method in between (good on both, best on neither) "
                    "is Pareto-optimal too if nothing beats it on both")
    if got == lowest or set(got) == set(names) - set(want):
        raise Wrong("these are the dominated (or the worst) methods: keep the ones no other point beats — higher is "
                    "better on both axes")
    raise Wrong(f"pareto_front({pts}) = {got}, expected {want}: keep each name no other point dominates")


@pareto_ex.check
def _pareto_single(fn):
    if list(fn({"only": (0.5, 0.5)})) != ["only"]:
        raise Wrong("a single method is Pareto-optimal on its own: return ['only']")
    got = list(fn({"a": (0.2, 0.9), "b": (0.9, 0.2), "c": (0.5, 0.5), "d": (0.4, 0.4)}))
    if got != ["a", "b", "c"]:
        raise Wrong(f"on a = (0.2, 0.9), b = (0.9, 0.2), c = (0.5, 0.5), d = (0.4, 0.4) the front is a, b, c "
                    f"(d is dominated by c), got {got}")
