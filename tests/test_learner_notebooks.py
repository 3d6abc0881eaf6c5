"""CI's second pass: every learner's version (notebooks/learner/) runs top to bottom with every exercise stub
untouched, on the notebooks' `quick` preset. Skipping an exercise must never break a later cell.

Each notebook runs in a fresh process through the course's own runner (`python -m course_lib.run`), with a limit per
cell: one kernel hung for 20 minutes in a widget cell of the last of ten kernels started from one pytest process
(idle kernel, a reply never read), and ran in 39 s on its own. A run that times out is tried once more; any other
failure fails at once.

A notebook with a widget is run this way only where there is no browser: test_widgets_in_browser.py runs its
learner's version in JupyterLab, quick preset, and makes the same checks there (one run, not two)."""
import os
import subprocess
import sys
import time

import nbformat
import pytest

import browser
from course_lib.exercises import learner as L
from exercise_harness import stubs_not_seen
from test_widgets_in_browser import widget_notebooks

PATHS = [L.learner_path(p) for p in L.notebooks()]
IN_THE_BROWSER = {p.name for p in widget_notebooks()}
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
    if path.name in IN_THE_BROWSER and browser.available() is None:
        pytest.skip("run in JupyterLab, with the same checks, by test_widgets_in_browser.py")
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
    printed = {i: "".join(o.get("text", "") for o in c.get("outputs", [])) for i, c in enumerate(nb.cells)
               if c.cell_type == "code"}
    unseen = stubs_not_seen(nb, printed)
    assert not unseen, f"checks that did not see their stub: {unseen}"
    print(f"{path.stem}: quick, learner's version, {seconds:.0f} s")
    assert seconds < 2400, "far over the quick preset's budget"
