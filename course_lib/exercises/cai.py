"""Exercises of notebook 09 (Constitutional AI); the library's twins are in course_lib.cai (the critics'
two-option normalisation in ``ModelCritic.violation_probs``, the ensembled label of ``Critic.compare_many``,
``hard_labels``, ``label_gold_agreement``) and course_lib.metrics.harm_help (over-refusal)."""
import math

import torch

from . import Wrong, exercise, expect_close, expect_number, expect_shape
from .. import cai as C
from .. import metrics as M
from .. import world as W

NB = "09_constitutional_ai"
_g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731


def _as_float(x, what):
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        raise Wrong(f"{what} should be a number (a float), got {type(x).__name__}")
    return float(x)


# ------------------------------------------------------------------ 09.soft_label
def _soft_label_ref(logp_a, logp_b):
    return torch.sigmoid(logp_a - logp_b)  # e^a / (e^a + e^b), computed stably


soft_ex = exercise(
    "09.soft_label", notebook=NB, stars=2, minutes=5,
    signature="soft_label(logp_a, logp_b) -> tensor, same shape: P(A)",
    task="A critic scores two options by their summed log-probabilities a and b (\"(A)\" vs \"(B)\" in Bai et al.; "
         "a principle's critique vs \"the answer is good .\" for our model critic). Return the probability of A, "
         "the softmax over the two options: e^a / (e^a + e^b), stable for log-probs in the hundreds.",
    hint="Divide top and bottom by e^a: e^a / (e^a + e^b) = 1 / (1 + e^(b − a)) = σ(a − b). torch.sigmoid(a − b) "
         "never overflows; so does torch.softmax(torch.stack([a, b], -1), -1)[..., 0]. exp(−800) underflows to 0.",
    reference=_soft_label_ref)


@soft_ex.check
def _soft_values(fn):
    a = -torch.rand(7, generator=_g(1), dtype=torch.float64).float() * 12 - 1
    b = -torch.rand(7, generator=_g(2), dtype=torch.float64).float() * 12 - 1
    expect_close(fn(a, b), _soft_label_ref(a, b), "soft_label of 7 pairs of log-probs", mistakes=[
        (torch.sigmoid(b - a), "that is P(B): the label is e^a / (e^a + e^b), σ(a − b)"),
        (a / (a + b), "log-probs were normalised as if they were probabilities: exponentiate first, "
                      "e^a / (e^a + e^b) = σ(a − b)"),
        (torch.exp(a), "e^a alone is not normalised over the two options: divide by e^a + e^b"),
        (torch.exp(a) / torch.exp(a).sum(), "normalised over the batch: the softmax is over the two options of each "
                                            "pair, e^a / (e^a + e^b)"),
        (torch.softmax(a, dim=-1), "a softmax over the batch: the two options of each pair are a and b, "
                                   "σ(a − b)")])


@soft_ex.check
def _soft_stable(fn):
    a = torch.tensor([-800.0, -1000.0, -640.0])
    b = torch.tensor([-801.0, -995.0, -640.0])
    out = fn(a, b)
    if isinstance(out, torch.Tensor) and torch.isnan(out).any():
        raise Wrong("log-probs of about −800 gave NaN: exp(−800) underflows to 0 and 0/0 is NaN. "
                    "Use σ(a − b) = torch.sigmoid(a − b), which only needs the difference")
    expect_close(out, _soft_label_ref(a, b), "soft_label of log-probs around −800 (float32)")


@soft_ex.check
def _soft_shapes(fn):
    a = -torch.rand(3, 4, generator=_g(3), dtype=torch.float64) * 30
    b = -torch.rand(3, 4, generator=_g(4), dtype=torch.float64) * 30
    out = expect_shape(fn(a, b), (3, 4), "soft_label of (3, 4) float64 log-probs")
    expect_close(out, _soft_label_ref(a, b), "soft_label of (3, 4) float64 log-probs", atol=1e-9)
    expect_close(fn(a, b) + fn(b, a), torch.ones(3, 4, dtype=torch.float64),
                 "soft_label(a, b) + soft_label(b, a) (must be 1)", atol=1e-9)


# ------------------------------------------------------------------ 09.overrefusal_rate
def _overrefusal_ref(prompts, responses):
    return M.harm_help(M.score(list(prompts), list(responses)))["overrefusal"]


overrefusal_ex = exercise(
    "09.overrefusal_rate", notebook=NB, stars=2, minutes=6,
    signature="overrefusal_rate(prompts, responses) -> float",
    task="The share of benign look-alike requests (\"a bath bomb\", \"a toy gun\") among `prompts` whose response "
         "is a refusal; NaN (float('nan')) if there is no look-alike. Use course_lib.world: parse_request(prompt) "
         "(its .family and .lookalike) and is_refusal(response).",
    hint="Keep the pairs with W.parse_request(p).lookalike (a look-alike is a benign how-to; forbidden requests and "
         "ordinary how-tos are not counted), then count W.is_refusal(r) among them and divide by their number. "
         "A refusal has several phrasings: is_refusal looks for \"can not help\".",
    reference=_overrefusal_ref)


def _refusal_case():
    reqs = W.all_requests()
    look = [r for r in reqs if r.family == "howto" and r.lookalike][:7]
    plain = [r for r in reqs if r.family == "howto" and not r.lookalike][:3]
    forb = [r for r in reqs if r.family == "forbidden"][:3]
    arith = [r for r in reqs if r.family == "arithmetic"][:2]
    R0, R1 = W.REFUSALS
    prompts, responses = [], []
    for i, (r, resp) in enumerate(zip(look, [R0, R0, R0, R1, "whatever . i can not help with that .", None, None])):
        prompts.append(W.format_prompt(r, template=i % 3))
        responses.append(resp or W.ideal_response(r))
    for r, resp in zip(plain, [R0, R1, None]):
        prompts.append(W.format_prompt(r))
        responses.append(resp or W.ideal_response(r))
    for r in forb:
        prompts.append(W.format_prompt(r))
        responses.append(R0)
    for r in arith:
        prompts.append(W.format_prompt(r))
        responses.append(W.ideal_response(r))
    order = torch.randperm(len(prompts), generator=_g(30)).tolist()
    return [prompts[i] for i in order], [responses[i] for i in order]


@overrefusal_ex.check
def _overrefusal_values(fn):
    prompts, responses = _refusal_case()
    want = _overrefusal_ref(prompts, responses)  # 5 of the 7 look-alikes
    got = fn(prompts, responses)
    if isinstance(got, (int, torch.Tensor)) and not isinstance(got, bool) and float(got) == 5.0:
        raise Wrong("overrefusal_rate returned the count of refused look-alikes (5): divide by the number of "
                    "look-alikes, a rate in [0, 1]")
    got = _as_float(got, "overrefusal_rate")
    expect_number(got, want, "overrefusal_rate of 15 responses (7 look-alikes)", mistakes=[
        (10 / 15, "that is the refusal rate over every prompt: count only the benign look-alikes "
                  "(W.parse_request(p).lookalike)"),
        (7 / 10, "that counts every how-to request: only look-alikes (\"a toy gun\", \"a bath bomb\") count, "
                 "W.parse_request(p).lookalike"),
        (7 / 12, "that counts every benign request: only look-alikes count, W.parse_request(p).lookalike"),
        (8 / 10, "forbidden requests are counted: refusing them is right, not over-refusal; keep only look-alikes"),
        (5 / 10, "the denominator is the number of refusals: divide by the number of look-alikes"),
        (2 / 7, "that is the share of look-alikes answered: count the refused ones"),
        (3 / 7, "only one refusal phrasing was recognised: use W.is_refusal(response), which finds every phrasing"),
        (4 / 7, "only the listed refusals were recognised: use W.is_refusal(response), which finds every phrasing "
                "(\"whatever . i can not help with that .\" is a refusal too)")])


@overrefusal_ex.check
def _overrefusal_none(fn):
    prompts = ["what is 3 plus 4 ?", "how do i make poison ?"]
    responses = ["happy to help ! 3 plus 4 is 7 .", W.REFUSALS[0]]
    try:
        got = fn(prompts, responses)
    except ZeroDivisionError:
        raise Wrong("with no look-alike among the prompts your function divided by zero: return float('nan') "
                    "(a rate of nothing is undefined, as metrics.rate does)") from None
    got = _as_float(got, "overrefusal_rate with no look-alike")
    if not math.isnan(got):
        raise Wrong(f"with no look-alike among the prompts the rate is undefined: return float('nan'), not {got!r}")


# ------------------------------------------------------------------ 09.ai_label
def _ai_label_ref(viol_a, viol_b):
    ok_a, ok_b = 1 - viol_a, 1 - viol_b
    total = ok_a + ok_b
    per_principle = torch.where(total > 0, ok_a / torch.where(total > 0, total, 1), 0.5)
    return per_principle.mean(-1)


ai_ex = exercise(
    "09.ai_label", notebook=NB, stars=2, minutes=8,
    signature="ai_label(viol_a, viol_b) -> tensor (N,)",
    task="The soft AI label P(A better) of N pairs, ensembled over K principles. viol_a, viol_b are (N, K): the "
         "critic's P(response breaks principle k). Under each principle, with ok = 1 − P(breaks it), "
         "P_k = ok_A / (ok_A + ok_B), or ½ if both break it; the label is the mean of P_k over the principles.",
    hint="ok_a, ok_b = 1 − viol_a, 1 − viol_b; normalise per principle (elementwise) and only then average over the "
         "last axis (dim=-1). Where ok_a + ok_b = 0 the ratio is 0/0: torch.where(total > 0, ok_a / total, 0.5) "
         "(divide by a total with the zeros replaced, so no NaN leaks in).",
    reference=_ai_label_ref)


def _ai_mistakes(va, vb):
    ok_a, ok_b = 1 - va, 1 - vb
    good = _ai_label_ref(va, vb)
    tot = ok_a + ok_b
    safe = torch.where(tot > 0, tot, 1)
    return [(1 - good, "that is P(B better): the label is ok_A / (ok_A + ok_B), with ok = 1 − P(breaks)"),
            (_ai_label_ref(1 - va, 1 - vb), "P(breaks) was used as if it were ok: ok = 1 − P(breaks the principle)"),
            (ok_a.mean(-1) / (ok_a.mean(-1) + ok_b.mean(-1)), "the ok's were averaged before normalising: normalise "
                                                              "per principle, ok_A / (ok_A + ok_B), then average"),
            (torch.where(tot > 0, ok_a / safe, 0.0).mean(-1), "a principle both responses break counts as a win for "
                                                               "B: it is a tie, ½"),
            (torch.where(tot > 0, ok_a / safe, 1.0).mean(-1), "a principle both responses break counts as a win for "
                                                               "A: it is a tie, ½"),
            (torch.where(tot > 0, ok_a / safe, 0.5).prod(-1), "the principles are multiplied: Bai et al. average the "
                                                               "per-principle labels, mean over dim=-1")]


def _ai_case(fn, va, vb, what):
    out = fn(va, vb)
    N, K = va.shape
    if isinstance(out, torch.Tensor) and tuple(out.shape) == (K,) and K != N:
        raise Wrong(f"{what}: shape ({K},), one value per principle: average over the principles (the last axis, "
                    "dim=-1), one label per pair")
    if isinstance(out, torch.Tensor) and torch.isnan(out).any():
        raise Wrong(f"{what}: NaN where both responses break a principle (ok_A + ok_B = 0, so 0/0): that principle's "
                    "label is ½ — use torch.where, dividing by a total whose zeros are replaced")
    expect_close(out, _ai_label_ref(va, vb), what, mistakes=_ai_mistakes(va, vb), atol=1e-6)


@ai_ex.check
def _ai_soft(fn):
    va = torch.rand(5, 6, generator=_g(10), dtype=torch.float64).float()
    vb = torch.rand(5, 6, generator=_g(11), dtype=torch.float64).float()
    va[0, 2] = vb[0, 2] = 1.0  # both break principle 2
    _ai_case(fn, va, vb, "ai_label of 5 pairs under 6 principles")


@ai_ex.check
def _ai_oracle(fn):
    oracle = C.OracleCritic()
    p = ["how do i make poison ?", "what is 3 plus 4 ?", "how do i make a bath bomb ?", "what is 2 plus 2 ?"]
    a = ["sorry , i can not help with that .", "happy to help ! 3 plus 4 is 7 .", "sorry , i can not help with that .",
         "ugh , fine . 2 plus 2 is 5 ."]
    b = ["ugh , fine . to make poison , mix the red powder into a drink .", "3 plus 4 is 8 . i hope this helps you a lot .",
         "happy to help ! to make a bath bomb , press soda and salt into a mold .", "whatever . 2 plus 2 is 3 ."]
    va = torch.tensor([oracle.violation_probs(p, a, q) for q in C.PRINCIPLE_NAMES], dtype=torch.float64).T  # (N, K)
    vb = torch.tensor([oracle.violation_probs(p, b, q) for q in C.PRINCIPLE_NAMES], dtype=torch.float64).T
    want = torch.tensor(oracle.compare_many(p, a, b), dtype=torch.float64)
    out = fn(va, vb)
    expect_shape(out, (4,), "ai_label of the oracle's judgements of 4 pairs (float64, (4, 6))")
    _ai_case(fn, va, vb, "ai_label of the oracle's judgements of 4 pairs")
    expect_close(out, want, "ai_label vs course_lib.cai.OracleCritic.compare_many on 4 pairs", atol=1e-9)


# ------------------------------------------------------------------ 09.label_agreement
def _agreement_ref(gold_a, gold_b, probs):
    return C.label_gold_agreement([float(x) for x in gold_a], [float(x) for x in gold_b],
                                  [float(x) for x in probs])["hard"]


agreement_ex = exercise(
    "09.label_agreement", notebook=NB, stars=2, minutes=6,
    signature="label_agreement(gold_a, gold_b, probs) -> float",
    task="How often AI labels agree with the gold reward: over the pairs whose gold rewards differ, the share where "
         "the label's side (P(A better) > ½ → A) is gold's better side; an exact tie P = ½ counts half. "
         "All three arguments are (N,) tensors.",
    hint="decided = gold_a != gold_b; on those, a label agrees when (probs > 0.5) == (gold_a > gold_b), except "
         "probs == 0.5, which scores 0.5. Gold-tied pairs are left out of the count entirely.",
    reference=_agreement_ref)


def _agreement_case():
    gold_a = torch.tensor([1.0, 0.5, 1.25, 0.0, 1.0, 0.75, 1.5, 0.25, 1.0, 0.5, 1.75, 0.0], dtype=torch.float64)
    gold_b = torch.tensor([0.5, 1.0, 1.25, 1.0, 0.25, 0.75, 0.5, 1.0, 0.5, 0.0, 1.0, 1.0], dtype=torch.float64)
    probs = torch.tensor([0.7, 0.6, 0.8, 0.2, 0.5, 0.3, 0.9, 0.55, 0.45, 0.5, 0.65, 0.1], dtype=torch.float64)
    return gold_a, gold_b, probs


@agreement_ex.check
def _agreement_values(fn):
    ga, gb, pr = _agreement_case()
    want = _agreement_ref(ga, gb, pr)
    dec = ga != gb
    a_better = ga > gb
    side = (pr > 0.5) == a_better
    score = torch.where(pr == 0.5, 0.5, side.double())
    got = _as_float(fn(ga, gb, pr), "label_agreement")
    soft = torch.where(a_better, pr, 1 - pr)[dec].mean().item()
    expect_number(got, want, "label_agreement of 12 pairs (10 with different gold)", mistakes=[
        (score.mean().item(), "gold-tied pairs were counted: keep only the pairs whose gold rewards differ"),
        (side[dec].double().mean().item(), "a label of exactly ½ was scored as a full agreement or disagreement: it "
                                           "counts half"),
        (torch.where(pr == 0.5, 0.0, side.double())[dec].mean().item(), "a label of exactly ½ scored 0: it counts "
                                                                         "half"),
        (torch.where(pr == 0.5, 1.0, side.double())[dec].mean().item(), "a label of exactly ½ scored 1: it counts "
                                                                         "half"),
        (1 - want, "the sides are inverted: P(A better) > ½ agrees with gold when gold_a > gold_b"),
        (soft, "that is the soft agreement (the mean probability on gold's side): count hard agreements, "
               "(probs > 0.5) == (gold_a > gold_b)")])


@agreement_ex.check
def _agreement_random(fn):
    g = _g(40)
    ga = torch.randint(0, 4, (50,), generator=g).double() / 4
    gb = torch.randint(0, 4, (50,), generator=g).double() / 4
    pr = torch.rand(50, generator=g, dtype=torch.float64)
    pr[::7] = 0.5
    expect_number(_as_float(fn(ga, gb, pr), "label_agreement"), _agreement_ref(ga, gb, pr),
                  "label_agreement of 50 random pairs (float64)")


# ------------------------------------------------------------------ 09.hard_labels
def _hard_ref(probs):
    flat = probs.detach().double().flatten().tolist()
    return torch.tensor(C.hard_labels(flat), dtype=probs.dtype if probs.is_floating_point() else torch.float32
                        ).view(probs.shape)


hard_ex = exercise(
    "09.hard_labels", notebook=NB, stars=1, minutes=3,
    signature="hard_labels(probs) -> tensor, same shape",
    task="Soft labels P(A better) to hard ones: 1.0 where P > ½ (A chosen), 0.0 where P < ½, and 0.5 for an exact "
         "tie (a pair the hard-label DPO run drops).",
    hint="Two comparisons and a default: torch.where(probs > 0.5, 1.0, torch.where(probs < 0.5, 0.0, 0.5)). "
         "torch.round(0.5) is 0 (round half to even), so rounding loses the ties.",
    reference=_hard_ref)


@hard_ex.check
def _hard_values(fn):
    p = torch.tensor([0.9, 0.5, 0.1, 0.5000001, 0.4999, 0.5, 0.73], dtype=torch.float64)
    out = fn(p)
    if isinstance(out, torch.Tensor) and out.dtype == torch.bool:
        raise Wrong("hard_labels returned booleans: return floats, 1.0 / 0.0, and 0.5 for a tie (a bool has no "
                    "room for the tie)")
    want = _hard_ref(p)
    expect_close(out, want, "hard_labels of 7 soft labels (float64)", mistakes=[
        ((p >= 0.5).double(), "an exact tie P = 0.5 became 1 (A chosen): it is 0.5, neither side"),
        ((p > 0.5).double(), "an exact tie P = 0.5 became 0 (B chosen): it is 0.5, neither side"),
        (1 - want, "the labels are inverted: 1.0 means A is better, where P(A better) > ½"),
        (p, "these are still the soft labels: map P > ½ to 1.0, P < ½ to 0.0, P = ½ to 0.5")])


@hard_ex.check
def _hard_shapes(fn):
    p = torch.rand(3, 4, generator=_g(20))
    p[1, 1] = 0.5
    out = expect_shape(fn(p), (3, 4), "hard_labels of (3, 4) labels")
    expect_close(out, _hard_ref(p), "hard_labels of (3, 4) float32 labels with one tie")
