"""Where the course keeps things: all inside the repository, never in the home folder."""
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
DATA_DIR = REPO_ROOT / "data"
BUILD_DIR = REPO_ROOT / "build"
CACHE_DIR = Path(os.environ.get("COURSE_CACHE_DIR", REPO_ROOT / ".cache"))


def metrics_dir() -> Path:
    """Folder of the recorded metrics: $COURSE_METRICS_DIR, else build/metrics/."""
    return Path(os.environ.get("COURSE_METRICS_DIR", BUILD_DIR / "metrics"))
