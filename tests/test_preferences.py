import random

import pytest
import torch

from course_lib import preferences as P
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
    rows = P.collect(["what is 3 plus 4 ?"], [rs], seed=0)
    assert len(rows) == 6 and {r["group"] for r in rows} == {0}
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
