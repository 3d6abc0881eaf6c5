"""The optional Triton track, run on CPU in Triton's interpreter, in a process of its own.

The checks live in tests/triton_kernel_checks.py. They run in a fresh Python with TRITON_INTERPRET=1 set
before anything imports triton: in this process, transformers and TRL (test_dpo's cross-check) may already
have imported triton in compiled mode, and then the interpreter cannot be switched on ("Cannot call
@triton.jit'd outside of the scope of a kernel"). Without triton the checks skip, unless
COURSE_REQUIRE_TRITON=1 (set by .ci/run), which makes a missing triton a failure."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKS = Path(__file__).with_name("triton_kernel_checks.py")


def test_triton_kernel_checks_pass_in_a_fresh_interpreter_process():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    r = subprocess.run([sys.executable, "-m", "pytest", str(CHECKS), "-q", "-p", "no:cacheprovider"], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=900)
    print(r.stdout[-3000:])
    assert r.returncode == 0, f"triton kernel checks failed:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
