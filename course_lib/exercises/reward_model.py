"""Exercises of notebook 06 (preferences and a reward model); the library's twins are in course_lib.preferences
and course_lib.reward_model. `pairs_from_ranking` has no public twin taking a ranking (preferences.label_pairs
ranks with an annotator first), so its reference is written here."""
import itertools
import math
import random

import torch
import torch.nn.functional as F

from . import Wrong, exercise, expect_close, expect_number
from .. import preferences as P
from .. import reward_model as R

NB = "06_preferences_reward_model"
_g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=_g(seed), dtype=torch.float64).to(dtype)


# ------------------------------------------------------------------ 06.pairs_from_ranking
def _pairs_ref(ranking):
    return [(a, b) for a, b in itertools.combinations(list(ranking), 2)]


pairs_ex = exercise(
    "06.pairs_from_ranking", notebook=NB, stars=1, minutes=5,
    signature="pairs_from_ranking(ranking) -> list of (chosen, rejected)",
    task="`ranking` lists K distinct responses from best to worst. Return every (chosen, rejected) pair the ranking "
         "implies — K(K−1)/2 of them, the better response first (any order of the pairs).",
    hint="Response i beats response j whenever i comes before j: loop over i < j (two nested loops, or "
         "`itertools.combinations(ranking, 2)`, which keeps the ranking's order inside each pair).",
    reference=_pairs_ref)


def _as_pairs(out, what):
    if not isinstance(out, (list, tuple)):
        raise Wrong(f"{what} should be a list of (chosen, rejected) tuples, got {type(out).__name__}")
    pairs = []
    for p in out:
        if not isinstance(p, (list, tuple)) or len(p) != 2:
            raise Wrong(f"{what}: every element should be a (chosen, rejected) pair, got {p!r}")
        pairs.append(tuple(p))
    return pairs


@pairs_ex.check
def _pairs_values(fn):
    for K in (2, 4, 6):
        ranking = [f"response {c}" for c in "ABCDEFG"[:K]]
        got = _as_pairs(fn(list(ranking)), f"pairs_from_ranking of {K} responses")
        want = _pairs_ref(ranking)
        if sorted(got) == sorted(want):
            continue
        n = len(got)
        if sorted(got) == sorted((b, a) for a, b in want):
            raise Wrong("every pair is reversed: the ranking lists the best response first, so the earlier one is "
                        "the chosen one — (ranking[i], ranking[j]) for i < j")
        if K > 2 and sorted(got) == sorted(zip(ranking, ranking[1:])):
            raise Wrong(f"only neighbours are compared ({n} pairs from K = {K}): a ranking also says the first beats "
                        "the third, the fourth, … — take every i < j, K(K−1)/2 pairs")
        if n == K * (K - 1):
            raise Wrong(f"{n} = K(K−1) pairs from K = {K}: each pair appears in both orders, so half of them say the "
                        "worse response was chosen — keep only i < j")
        if n == K * K:
            raise Wrong(f"{n} = K² pairs from K = {K}: you compare each response with itself too and take both "
                        "orders — keep only i < j")
        if n != K * (K - 1) // 2:
            raise Wrong(f"{n} pairs from a ranking of K = {K}; a ranking gives K(K−1)/2 = {K * (K - 1) // 2}")
        raise Wrong(f"the pairs from a ranking of K = {K} are not the ones it implies: for every i < j, "
                    "(ranking[i], ranking[j]) with the better (earlier) response first")


# ------------------------------------------------------------------ 06.predict_agreement
def _agreement_simulated(p=0.8, n=20000, seed=0):
    rng = random.Random(seed)
    return sum((rng.random() < p) == (rng.random() < p) for _ in range(n)) / n


agree_ex = exercise(
    "06.predict_agreement", notebook=NB, stars=1, minutes=3, kind="predict",
    signature="predict_agreement() -> float",
    task="Two annotators label the same pairs; each one, independently of the other, picks the response with the "
         "higher gold reward 80% of the time. Predict the fraction of pairs on which they give the same label; the "
         "check simulates 20,000 pairs.",
    hint="They agree when both are right or both are wrong, and the two events are independent: add the two "
         "probabilities.",
    reference=lambda: 0.8 ** 2 + 0.2 ** 2)


@agree_ex.check
def _predict_agreement(fn):
    guess = fn()
    if isinstance(guess, torch.Tensor) and guess.numel() == 1:
        guess = guess.item()
    if isinstance(guess, bool) or not isinstance(guess, (int, float)):
        raise Wrong(f"return a number (the fraction of pairs they agree on), got {type(guess).__name__}")
    measured = _agreement_simulated()
    if abs(guess - measured) < 0.02:
        return
    if abs(guess - 0.8) < 0.01:
        raise Wrong(f"measured {measured:.3f}: 0.8 is each annotator's agreement with the gold reward; two noisy "
                    "annotators agree with each other less often than either agrees with the truth")
    if abs(guess - 0.64) < 0.01:
        raise Wrong(f"measured {measured:.3f}: 0.64 counts only the pairs where both are right — they also agree "
                    "when both are wrong (0.2 × 0.2)")
    if abs(guess - 68) < 1:
        raise Wrong(f"measured {measured:.3f}: return a fraction between 0 and 1, not a percentage")
    raise Wrong(f"measured {measured:.3f}, you predicted {guess}. They agree when both are right or both are wrong.")


# ------------------------------------------------------------------ 06.cohen_kappa
kappa_ex = exercise(
    "06.cohen_kappa", notebook=NB, stars=2, minutes=8, signature="cohen_kappa(x, y) -> float",
    task="Cohen's κ of two raters' binary labels x and y (lists of 0/1 of one length): (p_o − p_e) / (1 − p_e), "
         "where p_o is the observed agreement and p_e the agreement expected by chance from each rater's own rate "
         "of 1s.",
    hint="p_o = mean of (x_i == y_i). With p_x, p_y the fractions of 1s, two independent raters agree by chance "
         "when both say 1 or both say 0: p_e = p_x·p_y + (1 − p_x)(1 − p_y).",
    reference=P.cohen_kappa)


def _kappa_parts(x, y):
    n = len(x)
    po = sum(a == b for a, b in zip(x, y)) / n
    px, py = sum(x) / n, sum(y) / n
    return po, px, py


def _kappa_case(fn, x, y, what):
    po, px, py = _kappa_parts(x, y)
    pe = px * py + (1 - px) * (1 - py)
    mistakes = [(po, "that is the percent agreement p_o: Cohen's κ removes the agreement chance alone would give, "
                     "(p_o − p_e) / (1 − p_e)"),
                ((po - 0.5) / 0.5, "chance agreement is taken as 0.5: it depends on how often each rater says 1, "
                                   "p_e = p_x·p_y + (1 − p_x)(1 − p_y)"),
                ((po - px * py) / (1 - px * py), "p_e counts only the chance that both say 1: add the chance that both "
                                                 "say 0, (1 − p_x)(1 − p_y)"),
                (po - pe, "divide by (1 − p_e): κ = 1 must mean perfect agreement")]
    if pe > 0:
        mistakes.append((po / pe, "κ is a difference scaled by the room above chance, (p_o − p_e) / (1 − p_e), not a "
                                  "ratio p_o / p_e"))
    expect_number(fn(list(x), list(y)), P.cohen_kappa(x, y), what, rel=1e-6, mistakes=mistakes)


@kappa_ex.check
def _kappa_values(fn):
    rng = random.Random(3)
    x = [int(rng.random() < 0.7) for _ in range(50)]
    y = [a if rng.random() < 0.75 else 1 - a for a in x]
    _kappa_case(fn, x, y, "cohen_kappa of two raters on 50 items (70% ones)")


@kappa_ex.check
def _kappa_edges(fn):
    x = [1, 0, 1, 1, 0, 0, 1, 0]
    _kappa_case(fn, x, list(x), "cohen_kappa of two raters who agree on every item")
    _kappa_case(fn, x, [1 - a for a in x], "cohen_kappa of two raters who disagree on every item")
    _kappa_case(fn, [1, 1, 1, 0, 1, 1], [1, 0, 1, 1, 1, 1], "cohen_kappa of two raters who mostly say 1")


# ------------------------------------------------------------------ 06.bradley_terry_loss
bt_ex = exercise(
    "06.bradley_terry_loss", notebook=NB, stars=1, minutes=5,
    signature="bradley_terry_loss(r_chosen, r_rejected) -> scalar tensor",
    task="The reward model's loss: the mean over pairs of −log σ(r_chosen − r_rejected), the negative "
         "log-likelihood of the labels under the Bradley–Terry model. r_chosen and r_rejected have one shape.",
    hint="P(chosen ≻ rejected) = σ(r_chosen − r_rejected); the loss is minus its log, averaged: "
         "`-F.logsigmoid(r_chosen - r_rejected).mean()`. `F.logsigmoid` stays finite where log(σ(x)) underflows "
         "to log 0 for very negative x.",
    reference=R.bradley_terry_loss)


def _bt_mistakes(rc, rr):
    d = rc - rr
    return [(-F.logsigmoid(-d).mean(), "chosen and rejected are swapped: the loss should fall as r_chosen rises above "
                                       "r_rejected, −log σ(r_chosen − r_rejected)"),
            (-F.logsigmoid(d).sum(), "that is the sum over pairs: take the mean, so the loss does not grow with the "
                                     "batch size"),
            (F.logsigmoid(d).mean(), "the sign is missing: log σ(·) is the log-likelihood to maximise; the loss to "
                                     "minimise is its negative"),
            (-(torch.sigmoid(rc) - torch.sigmoid(rr)).mean(), "σ(r_chosen) − σ(r_rejected) is not a probability of the "
                                                              "preference: take the sigmoid of the difference, "
                                                              "−log σ(r_chosen − r_rejected)"),
            ((-F.logsigmoid(rc) - F.logsigmoid(-rr)).mean(), "each reward is scored on its own (as if chosen were "
                                                             "'good' and rejected 'bad'): Bradley–Terry only sees the "
                                                             "difference, −log σ(r_chosen − r_rejected)"),
            ((-d).mean(), "no sigmoid: the loss is −log σ(r_chosen − r_rejected), which flattens out once a pair is "
                          "ranked right"),
            (-F.logsigmoid(d).mean() / math.log(2), "use the natural log (the log-likelihood in nats), not log₂")]


def _bt_case(fn, rc, rr, what):
    got = fn(rc, rr)
    if isinstance(got, torch.Tensor) and bool(torch.isnan(got).any()):
        raise Wrong(f"{what} is nan: did you take the log of σ(r_chosen) − σ(r_rejected), which is negative when "
                    "the rejected reward is higher? Take the sigmoid of the difference, −log σ(r_chosen − r_rejected)")
    expect_close(got, R.bradley_terry_loss(rc, rr), what, mistakes=_bt_mistakes(rc, rr))


@bt_ex.check
def _bt_values(fn):
    rc, rr = _randn(8, seed=30), _randn(8, seed=31)
    _bt_case(fn, rc, rr, "bradley_terry_loss of 8 pairs")


@bt_ex.check
def _bt_equal(fn):
    z = torch.zeros(5)
    _bt_case(fn, z, z, "bradley_terry_loss of 5 tied pairs (it should be ln 2)")


@bt_ex.check
def _bt_batch(fn):
    rc, rr = _randn(3, 16, seed=32, dtype=torch.float64) * 3, _randn(3, 16, seed=33, dtype=torch.float64) * 3
    _bt_case(fn, rc, rr, "bradley_terry_loss of (3, 16) float64 rewards (mean over every pair)")


@bt_ex.check
def _bt_large(fn):
    rc = torch.tensor([0.0, 120.0, -60.0, 3.0])
    rr = torch.tensor([120.0, 0.0, 60.0, -3.0])
    got = fn(rc, rr)
    if isinstance(got, torch.Tensor) and bool(torch.isinf(got).any()):
        raise Wrong("the loss is inf when r_rejected is 120 above r_chosen: σ(−120) underflows to 0 in float32 and "
                    "log 0 = −inf. Use F.logsigmoid(r_chosen − r_rejected), which computes log σ without forming σ")
    _bt_case(fn, rc, rr, "bradley_terry_loss with margins of ±120")


# ------------------------------------------------------------------ 06.preference_accuracy
acc_ex = exercise(
    "06.preference_accuracy", notebook=NB, stars=1, minutes=4,
    signature="preference_accuracy(r_chosen, r_rejected) -> float",
    task="The fraction of pairs the reward model ranks as labelled, r_chosen > r_rejected, a tie counting half "
         "(a coin flip would get it right half the time). Return a Python float.",
    hint="Compare elementwise: (r_chosen > r_rejected) counts 1, (r_chosen == r_rejected) counts 0.5; average with "
         ".float().mean() and .item().",
    reference=R.accuracy)


@acc_ex.check
def _acc_values(fn):
    rc = torch.tensor([1.0, 2.0, 0.5, -1.0, 3.0, 0.0, 2.0, 1.5])
    rr = torch.tensor([0.0, 2.0, 1.0, -1.0, 1.0, 0.0, -2.0, 1.0])
    d = rc - rr
    expect_number(fn(rc, rr), R.accuracy(rc, rr), "preference_accuracy of 8 pairs with 3 ties", mistakes=[
        ((d > 0).float().mean().item(), "ties count as wrong: a tie is a coin flip, count it as half right"),
        ((d >= 0).float().mean().item(), "ties count as right: a tie is a coin flip, count it as half right"),
        (((d < 0).float() + 0.5 * (d == 0).float()).mean().item(), "chosen and rejected are swapped: a pair is ranked "
                                                                   "right when r_chosen > r_rejected"),
        (((d > 0).float() + 0.5 * (d == 0).float()).sum().item(), "that is a count: divide by the number of pairs")])


@acc_ex.check
def _acc_batch(fn):
    rc, rr = _randn(4, 25, seed=34, dtype=torch.float64), _randn(4, 25, seed=35, dtype=torch.float64)
    expect_number(fn(rc, rr), R.accuracy(rc, rr), "preference_accuracy of (4, 25) float64 rewards (every pair counts)")
