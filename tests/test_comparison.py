"""course_lib.comparison: notebook 10's protocol — every phase of every method's cost counted — and its statistics."""
import math
import statistics

import pytest
import torch

from course_lib import comparison as C
from course_lib import metrics

# notebook 10's quick preset: the learner's version builds the same runs in CI, so they are cached once
QUICK = C.Scale(sft_steps=10, ppo_iterations=2, dpo_steps=4, cai_prompts=20, cai_revisions=1, cai_k=2, pm_epochs=2,
                n_val=60, n_kl=16)


# ---------------------------------------------------------------- no cost hidden
@pytest.mark.parametrize("method,knob", [("sft", None), ("ppo", 0.05), ("dpo", 0.1), ("cai", 0.05)])
def test_each_methods_time_includes_every_phase(method, knob):
    r = C.run(method, knob, seed=0, scale=QUICK)
    c = C.costs(r, QUICK)
    assert list(c) == list(C.PHASES[method])
    assert all(v > 0 for v in c.values()), c  # measured, not a silent 0 (DPO's cached reference once read 0 s)
    if method != "sft":  # what came before the run is charged too: the SFT model and the responses labelled
        assert {"SFT", "sample responses to label"} <= set(c)
    if method == "dpo":
        assert c["reference log-probs"] > 0.5  # the reference pass over ~4,500 pairs takes seconds, not 0
    assert set(r["scores"]) == set(C.SPLITS) and len(r["scores"]["val"]) == QUICK.n_val


def test_costs_refuse_a_run_missing_a_phase():
    r = {"recipe": {"method": "dpo"}, "own_phases": {"DPO": 1.0}}  # no reference log-probs measured
    with pytest.raises(ValueError, match="reference log-probs"):
        C.costs(r, QUICK)


def test_a_seed_re_runs_the_method_with_new_randomness():
    a, b = C.run("sft", None, seed=0, scale=QUICK), C.run("sft", None, seed=1, scale=QUICK)
    assert a["recipe"]["seed"] == 0 and b["recipe"]["seed"] == 1
    assert [x["response"] for x in a["scores"]["test"]] != [x["response"] for x in b["scores"]["test"]]


def test_labels_are_counted_per_method():
    lab = {m: C.labels(m, QUICK) for m in C.METHODS}
    assert all(x["demonstrations"] == 400 for x in lab.values())
    assert lab["sft"]["human comparisons"] == 0 and lab["dpo"]["AI labels"] == 0
    assert lab["ppo"]["human comparisons"] > lab["dpo"]["human comparisons"]  # the reward model's validation pairs
    assert 0 < lab["cai"]["human comparisons"] < lab["dpo"]["human comparisons"]  # helpfulness pairs only (a subset: by construction)
    assert lab["cai"]["AI labels"] > 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="rlhf", knob=0.1), "unknown method"),
    (dict(method="sft", knob=0.1), "takes no knob"),
    (dict(method="dpo", knob=None), "pass its beta"),
    (dict(method="dpo", knob=-1.0), "knob must be a number"),
    (dict(method="dpo", knob=0.1, lr_factor=0), "lr_factor"),
    (dict(method="dpo", knob=0.1, scale={"dpo_steps": 4}), "comparison.Scale"),
    (dict(method="dpo", knob=0.1, seed=-1), "seed"),
])
def test_run_rejects_bad_input_with_a_message(kwargs, match):
    with pytest.raises(ValueError, match=match):
        C.run(**kwargs)


def test_scale_rejects_non_positive_sizes():
    with pytest.raises(ValueError, match="ppo_iterations"):
        C.Scale(ppo_iterations=0)


def test_eval_prompts_split_main_into_disjoint_val_and_test():
    p = C.eval_prompts(100)
    assert len(p["val"]) == 100 and not set(p["val"]) & set(p["test"]) and len(p["safety"]) > 0
    with pytest.raises(ValueError, match="n_val"):
        C.eval_prompts(10**6)


# ---------------------------------------------------------------- statistics
def test_bootstrap_of_a_constant_offset_is_exact():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(1, 50, generator=g, dtype=torch.float64)  # one seed: only the prompts are resampled, the same for both
    v, lo, hi = C.bootstrap(lambda d: d["b"].mean((1, 2)) - d["a"].mean((1, 2)), {"a": a, "b": a + 0.25}, 200)
    assert v == pytest.approx(0.25) and lo == pytest.approx(0.25) and hi == pytest.approx(0.25)


def test_bootstrap_over_prompts_matches_the_normal_interval_with_one_seed():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 400, generator=g, dtype=torch.float64)
    v, lo, hi = C.bootstrap(lambda d: d["m"].mean((1, 2)), {"m": x}, 4000)
    half = 1.96 * x.std().item() / math.sqrt(400)
    assert v == pytest.approx(x.mean().item())
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)


def test_bootstrap_widens_when_seeds_disagree():
    g = torch.Generator().manual_seed(2)
    same = torch.randn(1, 200, generator=g, dtype=torch.float64).repeat(5, 1)
    shifted = same + torch.linspace(-0.5, 0.5, 5, dtype=torch.float64)[:, None]  # each seed offset
    w = lambda s: (lambda r: r[2] - r[1])(C.bootstrap(lambda d: d["m"].mean((1, 2)), {"m": s}, 1000))
    assert w(shifted) > 2 * w(same)


def test_bootstrap_rejects_methods_scored_on_different_prompts():
    with pytest.raises(ValueError, match="same prompts"):
        C.bootstrap(lambda d: d["a"].mean((1, 2)), {"a": torch.zeros(2, 5), "b": torch.zeros(2, 6)})
    with pytest.raises(ValueError, match="one value per resample"):
        C.bootstrap(lambda d: d["a"].mean(), {"a": torch.zeros(2, 5)}, 10)


def test_win_rates_count_ties_half_and_agree_with_the_exercise():
    a = torch.tensor([[[1.0, 0.0, 2.0, 2.0]]])
    b = torch.tensor([[[0.0, 0.0, 3.0, 2.0]]])
    assert C.win_rates(a, b).item() == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    from course_lib.exercises import reference
    assert C.win_rates(a, b).item() == pytest.approx(reference("10.win_rate")(a[0, 0], b[0, 0]))
    assert C.win_rates(a, b).item() + C.win_rates(b, a).item() == pytest.approx(1.0)


def test_headroom_is_zero_at_sft_and_one_at_the_best_possible():
    sft = torch.full((1, 2, 10), 1.0, dtype=torch.float64)
    assert C.headroom(sft, sft).item() == 0.0
    assert C.headroom(torch.full_like(sft, 1.75), sft).item() == pytest.approx(1.0)
    assert C.headroom(torch.full_like(sft, 0.625), sft).item() == pytest.approx(-0.5)


@pytest.mark.parametrize("lo,hi,low,high,want", [
    (0.45, 0.6, 0.4, 0.67, "HOLDS"), (0.7, 0.8, 0.4, 0.67, "DIFFERS"), (0.1, 0.3, 0.4, 0.67, "DIFFERS"),
    (0.5, 0.9, 0.4, 0.67, "INCONCLUSIVE"), (0.01, 0.2, 0.0, math.inf, "HOLDS"), (-0.2, 0.1, 0.0, math.inf, "INCONCLUSIVE"),
    (-0.2, -0.1, 0.0, math.inf, "DIFFERS"),
])
def test_claim_verdict(lo, hi, low, high, want):
    assert C.claim_verdict(lo, hi, low, high) == want


def test_claim_verdict_rejects_bad_intervals():
    with pytest.raises(ValueError, match="lo <= hi"):
        C.claim_verdict(0.5, 0.1, 0, 1)
    with pytest.raises(ValueError, match="must be a number"):
        C.claim_verdict(float("nan"), 0.1)


def test_claim_verdict_agrees_with_metrics_verdict_on_zero():
    for lo, hi in [(0.1, 0.2), (-0.2, -0.1), (-0.1, 0.1)]:
        words = metrics.verdict(lo, hi)
        assert (C.claim_verdict(lo, hi, 0.0, math.inf) == "HOLDS") == (words == "higher")


def test_ratio_of_means():
    v, lo, hi = C.ratio_of_means([2.0, 2.0, 2.0], [4.0, 4.0])
    assert (v, lo, hi) == (0.5, 0.5, 0.5)
    v, lo, hi = C.ratio_of_means([1.0, 2.0, 3.0], [2.0, 2.1, 1.9], n_boot=500)
    assert v == pytest.approx(1.0) and lo < 1.0 < hi
    with pytest.raises(ValueError, match="den all positive"):
        C.ratio_of_means([1.0], [0.0])
