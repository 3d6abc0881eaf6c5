"""CI's second pass: every learner's version (notebooks/learner/) runs top to bottom with every exercise stub
untouched, on the notebooks' `quick` preset. Skipping an exercise must never break a later cell.

Each notebook runs in a fresh process through the course's own runner (`python -m course_lib.run`), with a limit per
cell: one kernel hung for 20 minutes in a widget cell of the last of ten kernels started from one pytest process
(idle kernel, a reply never read), and ran in 39 s on its own. A run that times out is tried once more; any other
failure fails at once."""
import os
import subprocess
import sys
import time

import nbformat
import pytest

from course_lib.exercises import learner as L

PATHS = [L.learner_path(p) for p in L.notebooks()]
CELL_TIMEOUT = 600  # seconds; quick cells take well under a minute


def _run(path, out_dir, env):
    cmd = [sys.executable, "-m", "course_lib.run", str(path), "-p", "quick", "True", "--out", str(out_dir),
           "--timeout", str(CELL_TIMEOUT)]
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=2 * CELL_TIMEOUT)
    except subprocess.TimeoutExpired:
        return "timeout", "the runner itself passed its time limit"
    text = r.stdout + r.stderr
    if r.returncode == 0:
        return "ok", text
    return ("timeout" if "Timeout" in text or "timed out" in text else "failed"), text


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.stem)
def test_learner_version_runs_green_with_every_stub_untouched(path, tmp_path):
    env = dict(os.environ, COURSE_METRICS_DIR=str(tmp_path / "metrics"))  # keep the real runs' metrics
    t0 = time.perf_counter()
    status, text = _run(path, tmp_path, env)
    if status == "timeout":
        status, text = _run(path, tmp_path, env)
    seconds = time.perf_counter() - t0
    assert status == "ok", text[-4000:]
    nb = nbformat.read(str(tmp_path / path.name), as_version=4)
    ids = L.exercise_ids(nb)
    assert len(ids) >= 3
    text = {c.metadata["nbgrader"]["grade_id"]: "".join(o.get("text", "") for o in c.get("outputs", []))
            for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade_id", "").endswith(".check")}
    for ex_id in ids:
        assert "not attempted yet" in text[f"{ex_id}.check"], f"{ex_id}: its check did not see the stub"
    print(f"{path.stem}: quick, learner's version, {seconds:.0f} s")
    assert seconds < 2400, "far over the quick preset's budget"
