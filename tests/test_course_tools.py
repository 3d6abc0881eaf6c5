"""The course's machinery: offline settings, metrics, the headless runner, the doctor, notebook hygiene."""
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

import course_lib
from course_lib import doctor, report, run
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
    import torch

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


def test_doctor_reads_the_pins_and_passes_here(capsys):
    pins = dict(doctor.pinned_requirements())
    assert pins["torch"] == "2.13.0"
    assert doctor.main() == 0
    assert "[OK] torch" in capsys.readouterr().out
    rows = doctor.check_requirements([("surely-not-a-package-xyz", "1.0")])
    assert rows[0][0] is False and "not installed" in rows[0][1]


NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_conventions(path):
    nb = nbformat.read(str(path), as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    tags = [t for c in nb.cells for t in c.metadata.get("tags", [])]
    assert "parameters" in tags, "a papermill parameters cell"
    first = nb.cells[0].source.lower()
    assert "you will learn" in first and "runtime" in first, "opens with goals and a runtime estimate"
    assert any("summary" in c.source.lower() for c in nb.cells if c.cell_type == "markdown")
    assert any("references" in c.source.lower() for c in nb.cells if c.cell_type == "markdown")
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("outputs") is not None for c in code)
    assert any(c.outputs for c in code), "committed with its outputs"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, "saved with an error output"
    assert "report.start(" in "".join(c.source for c in code), "records its metrics"


def test_readme_results_come_from_recorded_metrics(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{run.README_START}\nSTALE\n{run.README_END}\noutro\n")
    assert run.update_readme(readme, {"05_sft": {"sft_gold_reward": 1.4481}, "07_rlhf_ppo": {"ppo_gold_reward": 1.5}})
    text = readme.read_text()
    assert "| 05 | gold reward after SFT | 1.45 |" in text and "| 07 |" in text and "STALE" not in text
    assert text.startswith("intro\n") and text.endswith("outro\n")
    assert run.README_START in (REPO_ROOT / "README.md").read_text()
    plain = tmp_path / "plain.md"
    plain.write_text("no section\n")
    with pytest.raises(ValueError, match="no <!-- results:start -->"):
        run.update_readme(plain, {})
