import math
import random

import pytest
import torch

from course_lib import preferences as P
from course_lib import world as W
from course_lib import reward_model as R


def test_annotator_probability_is_the_stated_bradley_terry_model():
    a = P.Annotator("t", tau=0.5)
    good, bad = "happy to help ! 3 plus 4 is 7 .", "3 plus 4 is 9 ."
    # gold 1.75 vs 0.5 (wrong, neutral, concise): sigma(1.25 / 0.5)
    assert a.p_prefers("what is 3 plus 4 ?", good, bad) == pytest.approx(1 / (1 + torch.exp(torch.tensor(-2.5)).item()))
    long = P.Annotator("l", tau=0.5, bias="length", bias_weight=1.0)
    assert long.p_prefers("what is 3 plus 4 ?", bad + " i hope this helps you a lot .", bad) > 0.5


def test_rankings_expand_to_all_pairs_grouped_per_prompt():
    rs = ["3 plus 4 is 7 .", "3 plus 4 is 8 .", "happy to help ! 3 plus 4 is 7 .", "ugh , fine . 3 plus 4 is 7 ."]
    rows = P.collect(["what is 3 plus 4 ?", "what is 2 plus 2 ?"], [rs, rs[:1] + ["2 plus 2 is 4 ."]], seed=0)
    assert [r["group"] for r in rows] == [0] * 6 + [1]  # 4 responses -> 6 pairs; 2 -> 1 pair
    assert {r["annotator"] for r in rows[:6]} == {P.ANNOTATORS[0].name} and rows[6]["annotator"] == P.ANNOTATORS[1].name
    assert all(r["chosen"] != r["rejected"] and {r["chosen"], r["rejected"]} <= set(rs) for r in rows[:6])
    with pytest.raises(ValueError, match="at least 2"):
        P.collect(["what is 3 plus 4 ?"], [rs[:1]])


def test_agreement_statistics():
    assert P.cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == 1.0
    assert P.cohen_kappa([1, 0, 1, 0], [0, 1, 0, 1]) == -1.0
    pct, kappa = P.agreement_matrix({"a": [1, 1, 0, 0], "b": [1, 1, 0, 0], "c": [1, 1, 0, 0]})
    assert pct == 1.0 and kappa == pytest.approx(1.0)
    rng = random.Random(0)
    noise = {k: [rng.random() < 0.5 for _ in range(4000)] for k in "abc"}
    assert abs(P.agreement_matrix(noise)[1]) < 0.05  # chance agreement -> kappa near 0


def test_bradley_terry_loss_and_accuracy():
    c, r = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0])
    torch.testing.assert_close(R.bradley_terry_loss(c, r),
                               -(torch.log(torch.sigmoid(torch.tensor(2.0))) + torch.log(torch.tensor(0.5))) / 2)
    assert R.accuracy(c, r) == 0.75  # a tie counts half
    with pytest.raises(ValueError, match="one shape"):
        R.bradley_terry_loss(c, r[:1])


def test_bias_features():
    assert P.n_words("happy to help ! 3 plus 4 is 7 .") == 10
    assert P.n_polite_words("of course , happy to help . sorry") == 3
    assert P.n_polite_words("coursework is unhappy") == 0  # whole words only


_ROW = {"gold_chosen": 1.0, "gold_rejected": 1.0}


@pytest.mark.parametrize("call,match", [
    (lambda: P.Annotator("x", tau=0), "tau must be a finite number > 0"),
    (lambda: P.Annotator("x", tau=-0.3), "tau must be a finite number > 0"),
    (lambda: P.Annotator("x", tau=float("nan")), "tau must be a finite number > 0"),
    (lambda: P.Annotator("x", tau=0.3, bias="shouting"), "unknown bias 'shouting': choose one of"),
    (lambda: P.Annotator("x", tau=0.3, bias="length", bias_weight=float("inf")), "bias_weight must be a finite"),
    (lambda: P.Annotator("", tau=0.3), "non-empty name"),
    (lambda: P.n_words(None), "a response must be a string"),
    (lambda: P.n_polite_words(["sorry"]), "a response must be a string"),
    (lambda: P.ANNOTATORS[0].rank("what is 3 plus 4 ?", [], random.Random(0)), "non-empty list of responses"),
    (lambda: P.label_pairs(P.ANNOTATORS[0], "what is 3 plus 4 ?", ["3 plus 4 is 7 ."], random.Random(0)),
     "at least 2 responses"),
    (lambda: P.label_pairs("careful", "what is 3 plus 4 ?", ["a", "b"], random.Random(0)), "must be a preferences.Annotator"),
    (lambda: P.collect([], []), "at least one prompt"),
    (lambda: P.collect(["what is 3 plus 4 ?"], [["a", "b"]], annotators=[]), "non-empty list of preferences.Annotator"),
    (lambda: P.gold_agreement([]), "at least one pair whose gold rewards differ"),
    (lambda: P.gold_agreement([_ROW, _ROW]), "all ties or none"),
    (lambda: P.agreement_matrix({"a": [1, 0]}), "at least 2 annotators"),
    (lambda: P.agreement_matrix({}), "at least 2 annotators"),
    (lambda: P.agreement_matrix({"a": [], "b": []}), "at least one labelled item"),
    (lambda: P.agreement_matrix({"a": [1, 0], "b": [1]}), "label the same items"),
    (lambda: P.agreement_matrix({"a": [1, 2], "b": [1, 0]}), "annotator 'a''s labels must be binary"),
    (lambda: P.cohen_kappa([], []), "at least one item"),
    (lambda: P.cohen_kappa([1, 0, 1], [1, 0]), "same items: got 3 and 2 labels"),
    (lambda: P.cohen_kappa([1, 0], [0.5, 1]), "y must be binary labels"),
    (lambda: P.fleiss_kappa([]), "at least one item"),
    (lambda: P.fleiss_kappa([[1, 0, 1], [1, 0]]), "the same number of raters"),
    (lambda: P.fleiss_kappa([[1, 0], [3, 1]]), "item 1 must be binary labels"),
])
def test_bad_arguments_name_the_fix(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_expected_rates_are_the_stated_expectations():
    """Notebook 06's annotator simulator: agreement E[p^2 + (1-p)^2], ceiling E[max(p, 1-p)], gold agreement."""
    prompt = "what is 3 plus 4 ?"
    good, bad, long_bad = "3 plus 4 is 7 .", "3 plus 4 is 9 .", "3 plus 4 is 9 . i hope this helps you a lot ."
    rows = [{"prompt": prompt, "chosen": a, "rejected": b, "gold_chosen": W.gold_reward(prompt, a).total,
             "gold_rejected": W.gold_reward(prompt, b).total} for a, b in ((good, bad), (bad, good), (good, long_bad))]
    ann = P.Annotator("x", tau=0.5)
    r = P.expected_rates(ann, rows)
    p = [ann.p_prefers(prompt, row["chosen"], row["rejected"]) for row in rows]
    assert r["p"] == p
    assert math.isclose(r["agreement"], sum(q * q + (1 - q) ** 2 for q in p) / 3)
    assert math.isclose(r["ceiling"], sum(max(q, 1 - q) for q in p) / 3)
    assert math.isclose(r["gold_agreement"], (p[0] + (1 - p[1]) + p[2]) / 3)
    # a strong taste for length: copies agree more on the long wrong answer, and with gold less
    tasted = P.expected_rates(P.Annotator("y", tau=0.5, bias="length", bias_weight=2.0), rows)
    assert tasted["gold_agreement"] < r["gold_agreement"]
    with pytest.raises(ValueError, match="at least one row"):
        P.expected_rates(ann, [])
    with pytest.raises(ValueError, match="must be a preferences.Annotator"):
        P.expected_rates("careful", rows)
