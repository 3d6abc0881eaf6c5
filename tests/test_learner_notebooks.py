"""CI's second pass: every learner's version (notebooks/learner/) runs top to bottom with every exercise stub
untouched, on the notebooks' `quick` preset. Skipping an exercise must never break a later cell."""
import time

import nbformat
import papermill as pm
import pytest

from course_lib.exercises import learner as L

PATHS = [L.learner_path(p) for p in L.notebooks()]


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_learner_version_runs_green_with_every_stub_untouched(path, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_METRICS_DIR", str(tmp_path / "metrics"))  # keep the real runs' metrics
    out = tmp_path / path.name
    t0 = time.perf_counter()
    pm.execute_notebook(str(path), str(out), parameters={"quick": True}, kernel_name="python3",
                        cwd=str(path.parent), progress_bar=False)
    seconds = time.perf_counter() - t0
    nb = nbformat.read(str(out), as_version=4)
    ids = L.exercise_ids(nb)
    assert len(ids) >= 3
    text = {c.metadata["nbgrader"]["grade_id"]: "".join(o.get("text", "") for o in c.get("outputs", []))
            for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id", "").endswith(".check")}
    for ex_id in ids:
        assert "not attempted yet" in text[f"{ex_id}.check"], f"{ex_id}: its check did not see the stub"
    print(f"{path.stem}: quick, learner's version, {seconds:.0f} s")
    assert seconds < 900, "far over the quick preset's budget"
