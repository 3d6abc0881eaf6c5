"""What every exercise's tests share: run a check, expect it to pass, fail with a hint, or see a stub.

A notebook's test module (tests/test_exercises_NN.py) defines
    CORRECT = {id: [fn, ...]}          # correct implementations other than the notebook's own solution
    WRONG = {id: [(fn, "words of the hint it must get"), ...]}   # plausible mistakes, at least two per exercise
and calls make_tests(CORRECT, WRONG) to get its test functions.
"""
import contextlib
import io
import math

import nbformat
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_lib import exercises as E
from course_lib.exercises.learner import notebooks

from course_lib import world as W

# what a solution cell may use without importing it (the notebooks' common imports)
SOLUTION_GLOBALS = {"torch": torch, "math": math, "F": F, "nn": nn, "W": W}


def run_check(exercise_id, fn):
    """(returned value, printed text) of check(exercise_id, fn)."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = E.check(exercise_id, fn)
    return result, buf.getvalue()


def expect_pass(exercise_id, fn):
    result, printed = run_check(exercise_id, fn)
    assert result is True and printed.startswith(f"✓ {exercise_id}"), printed


def expect_hint(exercise_id, fn, words):
    with pytest.raises(AssertionError) as info:
        run_check(exercise_id, fn)
    message = str(info.value)
    assert message.startswith(exercise_id), message
    assert words.lower() in message.lower(), f"expected the hint to say {words!r}, got: {message}"


def stub(*args, **kwargs):
    raise NotImplementedError()


def solution_cells():
    """{exercise id: source of its solution cell} over every committed notebook."""
    found = {}
    for path in notebooks():
        nb = nbformat.read(str(path), as_version=4)
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("solution"):
                found[meta["grade_id"]] = cell.source
    return found


def notebook_solution(exercise_id):
    """The function the notebook's own solution cell defines (run alone, with SOLUTION_GLOBALS)."""
    source = solution_cells()[exercise_id]
    namespace = dict(SOLUTION_GLOBALS)
    exec(compile(source, f"<solution {exercise_id}>", "exec"), namespace)
    name = E.get(exercise_id).name
    assert name in namespace, f"the solution cell of {exercise_id} defines no function {name!r}"
    return namespace[name]


def make_tests(CORRECT, WRONG):
    """Test functions for one notebook's exercises (assign them to module globals named test_*)."""
    correct = [(i, fn) for i, fns in CORRECT.items() for fn in fns]
    wrong = [(i, fn, words) for i, items in WRONG.items() for fn, words in items]

    @pytest.mark.parametrize("exercise_id,fn", correct, ids=[f"{i}-{n}" for n, (i, _) in enumerate(correct)])
    def test_accepts_a_correct_implementation(exercise_id, fn):
        expect_pass(exercise_id, fn)

    @pytest.mark.parametrize("exercise_id,fn,words", wrong, ids=[f"{i}-{n}" for n, (i, _, _) in enumerate(wrong)])
    def test_rejects_a_wrong_implementation_with_its_hint(exercise_id, fn, words):
        expect_hint(exercise_id, fn, words)

    return test_accepts_a_correct_implementation, test_rejects_a_wrong_implementation_with_its_hint


def stubs_not_seen(nb, text_of_cell):
    """The exercises of a learner's version whose check, run on the untouched stub, did not say so (or that have no
    check cell). `nb`: the notebook as run; `text_of_cell`: cell index -> the text its run printed."""
    checks = {c.metadata["nbgrader"]["grade_id"]: i for i, c in enumerate(nb.cells)
              if c.metadata.get("nbgrader", {}).get("grade_id", "").endswith(".check")}
    ids = [c.metadata["nbgrader"]["grade_id"] for c in nb.cells if c.metadata.get("nbgrader", {}).get("solution")]
    ids += [g[:-len(".check")] for g in checks if g[:-len(".check")] not in ids]
    return [e for e in ids if "not attempted yet" not in text_of_cell.get(checks.get(f"{e}.check"), "")]
