"""The course's machinery: offline settings, metrics, the headless runner, the doctor, notebook hygiene."""
import ast
import re
import importlib
import inspect
import json
import os
import sys
from importlib import metadata
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import pytest
import torch

import course_lib
from course_lib import attention, bench, doctor, flash, kv_cache, memory, model, paths, preferences, report, run, viz
from course_lib.bench import flash_rows, format_flash_rows
from course_lib.paths import NOTEBOOKS_DIR, REPO_ROOT


def test_import_makes_process_offline_and_keeps_caches_in_repo():
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
    assert os.environ["TOKENIZERS_PARALLELISM"] == "false"
    for var in ("HF_HOME", "HF_DATASETS_CACHE", "MPLCONFIGDIR"):
        assert Path(os.environ[var]).resolve().is_relative_to(course_lib.CACHE_DIR.resolve()), var
    assert ".cache/" in (REPO_ROOT / ".gitignore").read_text()


def test_report_start_record_load(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_METRICS_DIR", str(tmp_path))
    report.start("99_demo")
    report.record("a", 1.5)
    report.record("ok", True)
    report.record("t", torch.tensor(2.25))
    assert report.load("99_demo") == {"a": 1.5, "ok": True, "t": 2.25}
    assert json.loads((tmp_path / "99_demo.json").read_text())["a"] == 1.5
    report.start("99_demo")  # a rerun starts clean
    assert report.load("99_demo") == {}
    with pytest.raises(ValueError, match="finite"):
        report.record("bad", float("nan"))
    with pytest.raises(ValueError, match="number, bool"):
        report.record("bad", object())
    assert report.load("99_demo") == {}  # a refused value leaves the file as it was


@pytest.mark.parametrize("call,match", [
    (lambda: report.record("bad", float("inf")), "metric 'bad': metric value must be finite"),
    (lambda: report.record("bad", [1.0, float("nan")]), "metric 'bad': metric value must be finite"),
    (lambda: report.record("bad", {"a": torch.tensor(float("nan"))}), "must be finite"),
    (lambda: report.record("bad", torch.ones(3)), "convert it with .tolist\\(\\)"),
    (lambda: report.record("", 1), "metric name must be a non-empty string"),
    (lambda: report.record("x", 1, notebook="../elsewhere"), "notebook must be a file stem"),
    (lambda: report.load("a/b"), "notebook must be a file stem"),
    (lambda: report.start(".."), "notebook must be a file stem"),
])
def test_report_refuses_what_it_cannot_store(tmp_path, monkeypatch, call, match):
    monkeypatch.setenv("COURSE_METRICS_DIR", str(tmp_path))
    report.start("99_demo")
    with pytest.raises(ValueError, match=match):
        call()
    assert report.load("99_demo") == {}


def test_report_needs_a_notebook(monkeypatch):
    monkeypatch.setattr(report, "_current", None)
    with pytest.raises(ValueError, match="report.start"):
        report.record("x", 1)


def test_find_notebooks_and_parse_value(tmp_path):
    for name in ("01_a.ipynb", "02_b.ipynb"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in run.find_notebooks([], tmp_path)] == ["01_a.ipynb", "02_b.ipynb"]
    assert [p.name for p in run.find_notebooks(["02"], tmp_path)] == ["02_b.ipynb"]
    with pytest.raises(SystemExit, match="matches no notebook"):
        run.find_notebooks(["07"], tmp_path)
    assert run.parse_value("3") == 3 and run.parse_value("0.5") == 0.5
    assert run.parse_value("True") is True and run.parse_value("cpu") == "cpu"


def _notebook(path, code_cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in code_cells]
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, str(path))


def test_runner_executes_records_metrics_and_fails_loudly(tmp_path, monkeypatch, capsys):
    nbdir, out, metrics = tmp_path / "nbs", tmp_path / "build", tmp_path / "metrics"
    nbdir.mkdir()
    monkeypatch.setenv("COURSE_METRICS_DIR", str(metrics))
    _notebook(nbdir / "01_good.ipynb", ["x = 2", "from course_lib import report\nreport.start('01_good')\n"
                                        "report.record('x_squared', x * x)"])
    _notebook(nbdir / "02_bad.ipynb", ["y = 1", "raise RuntimeError('deliberate failure ' + str(y))"])
    monkeypatch.setattr(run, "NOTEBOOKS_DIR", nbdir)
    code = run.main([str(nbdir / "01_good.ipynb"), str(nbdir / "02_bad.ipynb"), "-p", "x", "5", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "deliberate failure 1" in captured.err
    assert "x_squared=25" in captured.out  # the parameter reached the notebook and the metric the table
    assert (out / "01_good.ipynb").exists() and (out / "01_good.html").exists()
    summary = json.loads((metrics / "run_summary.json").read_text())
    assert summary["01_good"]["status"] == "ok" and summary["02_bad"]["status"] == "FAILED"


def test_a_run_with_other_parameters_records_beside_its_outputs(tmp_path, monkeypatch):
    """The quick preset (or another seed) must not overwrite the recorded results the README is written from."""
    nbdir, out, build = tmp_path / "nbs", tmp_path / "quick", tmp_path / "build"
    nbdir.mkdir()
    monkeypatch.setenv("COURSE_METRICS_DIR", "unset")   # recorded, so the runner's setdefault is undone after the test
    monkeypatch.delenv("COURSE_METRICS_DIR")
    monkeypatch.setattr(paths, "BUILD_DIR", build)   # the course's recorded results: build/metrics/
    _notebook(nbdir / "01_good.ipynb", ["quick = False", "from course_lib import report\nreport.start('01_good')\n"
                                        "report.record('quick', quick)"])
    assert run.main([str(nbdir / "01_good.ipynb"), "-p", "quick", "True", "--out", str(out)]) == 0
    assert json.loads((out / "metrics" / "01_good.json").read_text())["quick"] is True
    assert (out / "metrics" / "run_summary.json").exists() and not (build / "metrics").exists()


def test_doctor_parses_pins(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# a comment\ntorch==1.2.3\nnumpy>=1\nfoo_bar == 4.5 ; python_version > '3'\n\nbaz==0.1+cpu  # local\n")
    assert doctor.pinned_requirements(req) == [("torch", "1.2.3"), ("foo_bar", "4.5"), ("baz", "0.1+cpu")]
    assert "torch" in dict(doctor.pinned_requirements())  # the course's own file pins torch


def test_doctor_compares_pins_with_what_is_installed():
    have = metadata.version("pytest")
    (ok, line), = doctor.check_requirements([("pytest", have)])
    assert ok and line.startswith("[OK] pytest")
    (ok, line), = doctor.check_requirements([("pytest", "0.0.1")])
    assert not ok and line == f"[FAIL] pytest: installed {have}, want 0.0.1"
    (ok, line), = doctor.check_requirements([("surely-not-a-package-xyz", "1.0")])
    assert not ok and "not installed" in line


def test_doctor_exit_status(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("COURSE_METRICS_DIR", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(doctor, "pinned_requirements", lambda: [("pytest", metadata.version("pytest"))])
    assert doctor.main() == 0
    out = capsys.readouterr().out
    assert "[OK] pytest" in out and "[OK] torch" in out and "[FAIL]" not in out
    monkeypatch.setattr(doctor, "pinned_requirements", lambda: [("surely-not-a-package-xyz", "1.0")])
    assert doctor.main() == 1
    assert "[FAIL] surely-not-a-package-xyz: not installed" in capsys.readouterr().out


def test_doctor_reports_a_broken_torch(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("COURSE_METRICS_DIR", str(tmp_path))
    monkeypatch.setattr(doctor, "pinned_requirements", lambda: [])
    real = importlib.import_module

    def broken(name, *args):
        if name == "torch":
            raise ImportError("simulated broken install")
        return real(name, *args)

    monkeypatch.setattr(doctor.importlib, "import_module", broken)
    assert doctor.main() == 1
    assert "[FAIL] torch: import failed: simulated broken install" in capsys.readouterr().out


def test_doctor_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="no requirements file at"):
        doctor.pinned_requirements(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="each pin must be a \\(name, version\\) pair"):
        doctor.check_requirements(["torch==2.0"])


def test_attention_heatmap_draws_one_matrix_and_checks_it():
    fig, ax = plt.subplots()
    try:
        w = torch.softmax(torch.randn(3, 4), -1)
        im = viz.attention_heatmap(ax, w, list("abc"), list("wxyz"), title="t")
        assert im.get_array().shape == (3, 4) and [t.get_text() for t in ax.get_yticklabels()] == list("abc")
        with pytest.raises(ValueError, match="one non-empty \\(T_q, T_k\\) matrix"):
            viz.attention_heatmap(ax, w[None])
        with pytest.raises(ValueError, match="one non-empty"):
            viz.attention_heatmap(ax, w[:0])
        with pytest.raises(ValueError, match="torch tensor or a numpy array"):
            viz.attention_heatmap(ax, w.tolist())
        with pytest.raises(ValueError, match="query_labels must have one label per row \\(3\\), got 2"):
            viz.attention_heatmap(ax, w, list("ab"))
        with pytest.raises(ValueError, match="key_labels must have one label per column \\(4\\), got 3"):
            viz.attention_heatmap(ax, w, None, list("xyz"))
        assert im.get_clim() == (0.0, float(w.max()))          # default: this matrix's own max
        assert viz.attention_heatmap(ax, w, vmax=1.0).get_clim() == (0.0, 1.0)  # one scale for several maps
        with pytest.raises(ValueError, match="vmax must be None"):
            viz.attention_heatmap(ax, w, vmax=0)
    finally:
        plt.close(fig)


MINE = [attention, bench, doctor, flash, kv_cache, memory, model, preferences, report, viz]


@pytest.mark.parametrize("module", MINE, ids=[m.__name__ for m in MINE])
def test_imports_are_at_the_top_and_never_private(module):
    """No import inside a function (doctor's torch check uses importlib.import_module, deliberately), and no
    use of another module's private helpers (module._name)."""
    tree = ast.parse(inspect.getsource(module))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert not inner, f"{module.__name__}.{node.name} imports {ast.unparse(inner[0])}"
        if isinstance(node, ast.ImportFrom):
            assert not any(a.name.startswith("_") for a in node.names), ast.unparse(node)
    imported = {a.asname or a.name for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}
    private = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("_")
               and not n.attr.startswith("__") and isinstance(n.value, ast.Name) and n.value.id in imported]
    assert not private, private




NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_conventions(path):
    nb = nbformat.read(str(path), as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    tags = [t for c in nb.cells for t in c.metadata.get("tags", [])]
    assert "parameters" in tags, "a papermill parameters cell"
    first = nb.cells[0].source.lower()
    assert "you will learn" in first and "runtime" in first, "opens with goals and a runtime estimate"
    assert re.search(r"<!-- runtime -->about [0-9.]+ (s|min)<!-- /runtime -->", nb.cells[0].source), \
        "the run time is the runner's measurement, stamped between the runtime markers by --update"
    assert any("summary" in c.source.lower() for c in nb.cells if c.cell_type == "markdown")
    assert any("references" in c.source.lower() for c in nb.cells if c.cell_type == "markdown")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("outputs") is not None for c in code)
    assert any(c.outputs for c in code), "committed with its outputs"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, "saved with an error output"
    assert "report.start(" in "".join(c.source for c in code), "records its metrics"


def test_runtime_is_stamped_from_the_measurement():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(
        f"you will learn\n**Runtime:** {run.RUNTIME_START}about 9 min{run.RUNTIME_END} on 2 cores.")])
    run.stamp_runtime(nb, 125.0)
    assert f"{run.RUNTIME_START}about 2.1 min{run.RUNTIME_END} on 2 cores." in nb.cells[0].source
    run.stamp_runtime(nb, 12.4)
    assert f"{run.RUNTIME_START}about 12 s{run.RUNTIME_END}" in nb.cells[0].source
    run.stamp_runtime(nb, None)  # no measurement recorded: the last one stays
    assert "about 12 s" in nb.cells[0].source
    with pytest.raises(ValueError, match="runtime"):
        run.stamp_runtime(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("no markers")]), 3.0)


def test_readme_results_come_from_recorded_metrics(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{run.README_START}\nSTALE\n{run.README_END}\noutro\n")
    assert run.update_readme(readme, {"05_sft": {"sft_gold_reward": 1.4481}, "07_rlhf_ppo": {"ppo_gold_reward": 1.5}})
    text = readme.read_text()
    assert "| 05 | gold reward after SFT | 1.45 |" in text and "| 07 |" in text and "STALE" not in text
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert run.README_START in (REPO_ROOT / "README.md").read_text()
    # a value with its interval, from one metric holding a list or from several metrics; a missing part drops the row
    table = run.headline_table({"06_rm": {"rm_heldout_accuracy": 0.571, "rm_heldout_accuracy_ci": [0.529, 0.613]},
                                "02_v": {"val_loss_gqa_minus_mha": 0.0059}})
    assert "| 06 | reward model test accuracy vs labels [95% CI over test prompts] | 57.1% [52.9%, 61.3%] |" in table
    assert "GQA − MHA" not in table
    # a fresh checkout that ran only notebook 07 keeps 05's rows (nothing recorded for it here) and rewrites 07's
    assert run.update_readme(readme, {"05_sft": {}, "07_rlhf_ppo": {"ppo_gold_reward": 1.25}})
    text = readme.read_text()
    assert "| 05 | gold reward after SFT | 1.45 |" in text and "| 07 | gold reward after PPO (β = 0.05) | 1.25 |" in text
    assert text.index("| 05 |") < text.index("| 07 |")
    plain = tmp_path / "plain.md"
    plain.write_text("no section\n")
    with pytest.raises(ValueError, match="no <!-- results:start -->"):
        run.update_readme(plain, {})


def test_instructors_table_keeps_the_run_time_of_a_notebook_not_run_here():
    stems = [p.stem for p in run.find_notebooks([])]
    measured = {stem: {"notebook_seconds": 100.0 + i} for i, stem in enumerate(stems)}
    first = run.instructor_table(measured)
    keep = run._rows_by_notebook(f"{run.INSTRUCTORS_START}\n{first}\n{run.INSTRUCTORS_END}", run.INSTRUCTORS_START,
                                 run.INSTRUCTORS_END, {stems[0][:2]})
    again = run.instructor_table({**measured, stems[0]: {}}, keep=keep)
    assert again.splitlines()[2] == first.splitlines()[2] and "1.7 min" in again.splitlines()[2]
    assert "| – |" in run.instructor_table({**measured, stems[0]: {}}).splitlines()[2]  # nothing kept: a dash


def test_flash_benchmark_rows_and_table():
    rows = flash_rows(sizes=[64, 128], d=8, repeats=1, memory=True)
    assert [r["T"] for r in rows] == [64, 128]
    for r in rows:
        assert r["tiled_over_sdpa"] == pytest.approx(r["tiled_s"] / r["sdpa_s"])
        assert r["naive_peak_bytes"] >= 2 * r["T"] ** 2 * 4  # naive holds the scores and the weights
    table = format_flash_rows(rows).splitlines()
    assert len(table) == 2 + len(rows) and "peak naive" in table[0]


@pytest.mark.parametrize("kwargs,match", [
    (dict(sizes=[]), "sizes must be a non-empty list"),
    (dict(sizes=[0]), "every size T must be a positive integer"),
    (dict(sizes=[64], batch=0), "batch must be a positive integer"),
    (dict(sizes=[64], heads=-1), "heads must be a positive integer"),
    (dict(sizes=[64], d=0), "d must be a positive integer"),
    (dict(sizes=[64], repeats=0), "repeats must be a positive integer"),
    (dict(sizes=[64], is_causal="no"), "is_causal must be True or False"),
])
def test_flash_benchmark_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        flash_rows(**kwargs)


def test_flash_benchmark_table_needs_rows():
    with pytest.raises(ValueError, match="non-empty list of dicts that flash_rows returns"):
        format_flash_rows([])


def test_saved_progress_bars_are_dropped_from_committed_notebooks():
    import nbformat

    from course_lib import run

    bar = nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "x", "version_major": 2, "version_minor": 0},
        "text/plain": "SFT:   0%|          | 0/150 [00:00<?, ?it/s]"})
    text = nbformat.v4.new_output("stream", name="stdout", text="SFT: 150 steps in 6.4 s\n")
    widget = nbformat.v4.new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"model_id": "y", "version_major": 2, "version_minor": 0},
        "text/plain": "interactive(children=(IntSlider(value=3),))"})
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x", outputs=[bar, text, widget])])
    run._strip_run_metadata(nb)
    assert nb.cells[0].outputs == [text, widget]  # the bar goes; printed results and real widgets stay
