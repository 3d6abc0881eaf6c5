"""course_lib: the tested code the course's notebooks share.

Importing it makes the process offline and quiet, and points every cache into the
repository's git-ignored ``.cache/`` folder, so a notebook never reaches the network
or writes to the learner's home folder. Import it before transformers or datasets.
"""
import os
import sys

from .paths import CACHE_DIR

_SETTINGS = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "HF_HOME": str(CACHE_DIR / "huggingface"),
    "HF_DATASETS_CACHE": str(CACHE_DIR / "huggingface" / "datasets"),
    "MPLCONFIGDIR": str(CACHE_DIR / "matplotlib"),
    "KINETO_LOG_LEVEL": "6",  # torch.profiler (memory measurements) stays quiet in notebooks
}
os.environ.update(_SETTINGS)

if "transformers" in sys.modules:  # imported before us: quieten it now
    sys.modules["transformers"].logging.set_verbosity_error()

__all__ = ["CACHE_DIR"]
