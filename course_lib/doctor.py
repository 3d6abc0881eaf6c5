"""python -m course_lib.doctor: what a bug report needs, one line per fact.

Checks each pinned requirement against what is installed, the Python version, torch's
threads and device, and that the course's caches are writable. Exit status 1 on a FAIL.
"""
import importlib
import os
import platform
import re
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from .paths import CACHE_DIR, REPO_ROOT, metrics_dir

_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+)")


def pinned_requirements(path=REPO_ROOT / "requirements.txt"):
    """[(name, wanted version)] for every `name==version` line of requirements.txt."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no requirements file at {path}; pass the path of the course's requirements.txt")
    pins = []
    for line in path.read_text().splitlines():
        m = _PIN.match(line.strip())
        if m:
            pins.append((m.group(1), m.group(2)))
    return pins


def check_requirements(pins):
    """[(ok, line)] comparing each pin with the installed version."""
    pins = list(pins)
    for pin in pins:
        if not (isinstance(pin, tuple) and len(pin) == 2 and all(isinstance(x, str) and x for x in pin)):
            raise ValueError(f"each pin must be a (name, version) pair of strings, as pinned_requirements() "
                             f"gives, got {pin!r}")
    rows = []
    for name, wanted in pins:
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            rows.append((False, f"[FAIL] {name}: not installed (want {wanted})"))
            continue
        ok = have.split("+")[0] == wanted.split("+")[0]
        rows.append((ok, f"[{'OK' if ok else 'FAIL'}] {name}: installed {have}, want {wanted}"))
    return rows


def _writable(folder):
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
        return True
    except OSError:
        return False


def main():
    rows = check_requirements(pinned_requirements())
    ok_py = sys.version_info[:2] >= (3, 10)
    rows.append((ok_py, f"[{'OK' if ok_py else 'FAIL'}] python: {platform.python_version()} ({sys.executable})"))
    try:  # deliberately imported here: a broken torch install is one of the things the doctor reports
        torch = importlib.import_module("torch")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        rows.append((True, f"[OK] torch: {torch.get_num_threads()} threads, device {device}, "
                           f"{os.cpu_count()} CPUs seen"))
    except Exception as e:  # noqa: BLE001 - the doctor reports whatever is broken
        rows.append((False, f"[FAIL] torch: import failed: {e}"))
    for label, folder in (("cache", CACHE_DIR), ("metrics", metrics_dir())):
        ok = _writable(folder)
        rows.append((ok, f"[{'OK' if ok else 'FAIL'}] {label} folder writable: {folder}"))
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    rows.append((offline, f"[{'OK' if offline else 'FAIL'}] offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}"))
    for _, line in rows:
        print(line)
    failed = sum(not ok for ok, _ in rows)
    print(f"doctor: {len(rows) - failed} OK, {failed} FAIL")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
