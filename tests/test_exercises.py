"""The exercises as a whole: the registry, the notebooks' exercise cells, the learner's versions."""
import contextlib
import importlib
import io
import re

import nbformat
import pytest

from course_lib import exercises as E
from course_lib.exercises import learner as L
from course_lib.exercises.__main__ import main as cli
from exercise_harness import expect_pass, notebook_solution, run_check, solution_cells, stub

REG = E.registry()

REQUIRED = {  # the ids and signatures, exactly
    "01.causal_mask": "causal_mask(T) -> bool tensor (T, T)",
    "01.attention": "attention(q, k, v, mask=None) -> tensor",
    "02.kv_cache_bytes": "kv_cache_bytes(n_layers, n_kv_heads, d_head, n_tokens, batch, bytes_per_value) -> int",
    "03.merge_softmax_states": "merge_softmax_states(m1, l1, acc1, m2, l2, acc2) -> (m, l, acc)",
    "05.sft_labels": "sft_labels(prompt_ids, response_ids) -> list[int]",
    "06.bradley_terry_loss": "bradley_terry_loss(r_chosen, r_rejected) -> scalar tensor",
    "07.gae": "gae(rewards, values, gamma, lam) -> (advantages, returns)",
    "07.ppo_clip_loss": "ppo_clip_loss(logp_new, logp_old, advantages, clip_eps) -> scalar",
    "07.kl_penalized_rewards": "kl_penalized_rewards(score, logp, ref_logp, beta) -> (B, T)",
    "08.dpo_loss": "dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta) -> (B,)",
}


def _case_modules():
    mods = []
    for nn_ in sorted({i.split(".")[0] for i in REG}):
        try:
            mods.append(importlib.import_module(f"test_exercises_{nn_}"))
        except ModuleNotFoundError:
            pass
    return mods


def test_at_least_40_exercises_3_per_notebook_30_run_code():
    per = {}
    for ex in REG.values():
        per.setdefault(ex.notebook, []).append(ex)
    assert len(REG) >= 40, len(REG)
    assert len(per) == len(L.notebooks()), sorted(per)
    assert all(len(v) >= 3 for v in per.values()), {k: len(v) for k, v in per.items()}
    assert sum(ex.kind == "implement" for ex in REG.values()) >= 30


@pytest.mark.parametrize("exercise_id", sorted(REQUIRED))
def test_required_ids_and_signatures(exercise_id):
    assert REG[exercise_id].signature == REQUIRED[exercise_id]


@pytest.mark.parametrize("exercise_id", list(REG))
def test_each_exercise_is_whole(exercise_id):
    ex = REG[exercise_id]
    assert re.fullmatch(r"\d\d\.[a-z_0-9]+", ex.id) and ex.notebook.startswith(ex.id[:2])
    assert ex.signature.startswith(ex.name + "(") and ex.task and ex.hint and ex.checks and ex.minutes > 0
    assert ex.reference is not None


@pytest.mark.parametrize("exercise_id", list(REG))
def test_tests_prove_two_wrong_rejected_and_a_second_correct_accepted(exercise_id):
    correct = sum(len(m.CORRECT.get(exercise_id, [])) for m in _case_modules())
    wrong = sum(len(m.WRONG.get(exercise_id, [])) for m in _case_modules())
    assert correct >= 1, f"{exercise_id}: no correct implementation besides the notebook's solution"
    assert wrong >= 2, f"{exercise_id}: fewer than two wrong implementations tested"


@pytest.mark.parametrize("exercise_id", list(REG))
def test_the_notebooks_own_solution_passes(exercise_id):
    expect_pass(exercise_id, notebook_solution(exercise_id))


@pytest.mark.parametrize("exercise_id", list(REG))
def test_the_untouched_stub_is_not_attempted(exercise_id):
    result, printed = run_check(exercise_id, stub)
    assert result is False and "not attempted yet" in printed, printed


@pytest.mark.parametrize("exercise_id", [i for i in REG if REG[i].kind == "implement"])
def test_the_reference_passes(exercise_id):
    expect_pass(exercise_id, REG[exercise_id].reference)


def test_check_says_what_to_fix_on_bad_input():
    with pytest.raises(KeyError, match="this notebook's are"):
        E.check("01.no_such_thing", stub)
    with pytest.raises(TypeError, match="pass your function itself"):
        E.check("01.causal_mask", 3)


def test_a_crashing_function_gets_the_hint():
    def crashes(T):
        return T.shape  # int has no .shape
    with pytest.raises(AssertionError, match="your function raised AttributeError") as info:
        E.check("01.causal_mask", crashes)
    assert "Hint:" in str(info.value)


def _cells_by_exercise(path):
    nb = nbformat.read(str(path), as_version=4)
    found = {}
    for i, c in enumerate(nb.cells):
        gid = c.metadata.get("nbgrader", {}).get("grade_id")
        if gid:
            base = re.sub(r"\.(task|check)$", "", gid)  # task and check cells: "<id>.task", "<id>.check"
            found.setdefault(base, []).append((i, c))
    return nb, found


@pytest.mark.parametrize("path", L.notebooks(), ids=lambda p: p.stem)
def test_notebook_holds_its_exercises_as_task_solution_check(path):
    nb, found = _cells_by_exercise(path)
    mine = [i for i, ex in REG.items() if ex.notebook == path.stem]
    assert sorted(found) == sorted(mine)
    assert L.exercise_ids(nb) == mine, "the notebook's exercises in the registry's order"
    for ex_id, cells in found.items():
        ex = REG[ex_id]
        (i_md, md), (i_sol, sol), (i_chk, chk) = cells
        assert (i_sol, i_chk) == (i_md + 1, i_md + 2), f"{ex_id}: task, solution, check in a row"
        assert md.source == L.exercise_markdown(ex), f"{ex_id}: markdown differs from the registry's (regenerate it)"
        assert L.BEGIN in sol.source and L.END in sol.source and f"def {ex.name}(" in sol.source
        assert re.search(rf"check\(\"{re.escape(ex_id)}\", {ex.name}\)", chk.source), chk.source
        assert sol.metadata["nbgrader"]["solution"] and chk.metadata["nbgrader"]["locked"]


@pytest.mark.parametrize("path", L.notebooks(), ids=lambda p: p.stem)
def test_the_learner_version_is_committed_and_current(path):
    want = L.render(L.learner_version(nbformat.read(str(path), as_version=4)))
    target = L.learner_path(path)
    assert target.exists(), f"{target} is missing: python -m course_lib.exercises learner"
    assert target.read_text(encoding="utf-8") == want, "stale: python -m course_lib.exercises learner"
    assert L.BEGIN not in want and "raise NotImplementedError()" in want


@pytest.mark.parametrize("path", L.notebooks(), ids=lambda p: p.stem)
def test_nbgrader_clears_solutions_to_the_same_learner_version(path):
    from nbgrader.preprocessors import ClearSolutions
    nb = nbformat.read(str(path), as_version=4)
    theirs, _ = ClearSolutions().preprocess(nbformat.from_dict(nb), {})
    ours = L.learner_version(nb)
    assert [c.source for c in theirs.cells] == [c.source for c in ours.cells]
    assert [c.metadata for c in theirs.cells] == [c.metadata for c in ours.cells]


def test_exercise_markdown_never_contains_the_markers():
    for ex in REG.values():
        text = L.exercise_markdown(ex)
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text


def test_clear_solution_keeps_indentation_and_rejects_a_lone_marker():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
    assert L.clear_solution(src) == "def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"
    with pytest.raises(ValueError, match="without its END"):
        L.clear_solution("### BEGIN SOLUTION\nx = 1")


def test_cli_list_and_show():
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cli(["list"])
    out = buf.getvalue()
    for ex_id, sig in REQUIRED.items():
        assert ex_id in out and sig in out
    assert f"{len(REG)} exercises" in out
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cli(["show", "01.causal_mask"])
    assert "Hint:" in buf.getvalue()
    with pytest.raises(SystemExit, match="no exercise"):
        cli(["show", "01.nope"])


def test_every_solution_cell_is_a_registered_exercise():
    assert set(solution_cells()) <= set(REG)


def test_strict_mode_fails_an_untouched_stub(monkeypatch):
    monkeypatch.setenv("COURSE_STRICT_CHECKS", "1")
    with pytest.raises(AssertionError, match="not attempted"):
        E.check("01.causal_mask", stub)
