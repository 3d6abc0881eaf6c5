"""Metrics a notebook records, for the runner's table, later notebooks and CI.

    from course_lib import report
    report.start("01_attention")          # once, at the top: clears this notebook's old metrics
    report.record("sdpa_max_abs_err", err)

Each notebook's metrics live in ``<metrics dir>/<notebook stem>.json`` (a JSON object
name -> value); the metrics dir is $COURSE_METRICS_DIR or ``build/metrics/``.
"""
import json
import math
import numbers
import os
import tempfile

from .paths import metrics_dir

_current = None


def _check_notebook(notebook):
    if not isinstance(notebook, str) or not notebook or "/" in notebook or "\\" in notebook or notebook in (".", ".."):
        raise ValueError(f"notebook must be a file stem such as '01_attention', got {notebook!r}")
    return notebook


def _path(notebook):
    return metrics_dir() / f"{_check_notebook(notebook)}.json"


def _write_atomic(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)


def start(notebook):
    """Name the notebook whose metrics follow and clear what it recorded before."""
    global _current
    _current = _check_notebook(notebook)
    _write_atomic(_path(notebook), {})


def _plain(value):
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # torch / numpy scalars
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"metric value must be finite, got {value}; record a finite number, "
                             "or None for a measurement that could not be made")
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    hint = "; convert it with .tolist()" if hasattr(value, "tolist") else ""
    raise ValueError(f"metric value must be a number, bool, string, list or dict, got {type(value).__name__}{hint}")


def record(name, value, notebook=None):
    """Add (or replace) metric `name` for the current notebook."""
    notebook = notebook or _current
    if notebook is None:
        raise ValueError("call report.start('<notebook stem>') before report.record(...)")
    _check_notebook(notebook)
    if not isinstance(name, str) or not name:
        raise ValueError(f"metric name must be a non-empty string, got {name!r}")
    try:
        value = _plain(value)
    except ValueError as e:
        raise ValueError(f"metric {name!r}: {e}") from None
    path = _path(notebook)
    data = load(notebook) if path.exists() else {}
    data[name] = value
    _write_atomic(path, data)


def load(notebook):
    """The metrics a notebook recorded ({} if none)."""
    path = _path(notebook)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it and rerun notebook {notebook}") from None
