"""The optional Triton track: course_lib.triton_flash's kernel, run on CPU by Triton's interpreter.

Not collected by pytest directly: tests/test_triton_flash.py runs this file in a fresh process with
TRITON_INTERPRET=1 set before anything imports triton (in the main test process transformers and TRL may
have imported triton already, in compiled mode, and the interpreter cannot be switched on afterwards).

Skipped when triton is not installed (pip install -r requirements-triton.txt), unless
COURSE_REQUIRE_TRITON=1 (set by .ci/run), which turns the skip into a failure."""
import ast
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

HAVE_TRITON = importlib.util.find_spec("triton") is not None
if not HAVE_TRITON and os.environ.get("COURSE_REQUIRE_TRITON") == "1":
    raise RuntimeError("COURSE_REQUIRE_TRITON=1 but triton is not installed: pip install -r requirements-triton.txt")
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed (optional Triton track: "
                                                          "pip install -r requirements-triton.txt, Linux only)")
if HAVE_TRITON:
    # triton.jit reads TRITON_INTERPRET when the kernel is defined, i.e. when the module is imported.
    _before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    from course_lib import triton_flash
    from course_lib.triton_flash import flash_attention_triton
    if _before is None:
        os.environ.pop("TRITON_INTERPRET")  # keep it out of later tests and the notebooks' kernels
    else:
        os.environ["TRITON_INTERPRET"] = _before


@pytest.fixture(autouse=True)
def _interpret(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # while the interpreted kernel runs


def _qkv(B, H, T, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, T, d, generator=g).to(dtype) for _ in range(3))


@needs_triton
def test_the_interpreter_is_on():
    assert triton_flash.INTERPRET, "course_lib.triton_flash was imported before TRITON_INTERPRET=1 was set"


# T = 64 with blocks that divide it; T = 100 and 37 leave ragged last query and key blocks.
SHAPES = [(1, 2, 64, 32, 16), (1, 2, 100, 32, 16), (2, 1, 37, 16, 32), (1, 1, 100, 64, 64)]


@needs_triton
@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float16, 2e-3)], ids=["fp32", "fp16"])
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("B,H,T,bq,bk", SHAPES)
def test_matches_sdpa(B, H, T, bq, bk, is_causal, dtype, atol):
    q, k, v = _qkv(B, H, T, 64, dtype)
    out = flash_attention_triton(q, k, v, is_causal=is_causal, block_q=bq, block_k=bk)
    assert out.dtype == dtype and out.shape == q.shape
    ref = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=is_causal)  # fp32 reference
    err = (out.float() - ref).abs().max().item()
    assert err < atol, f"max abs error {err:.2e} vs SDPA (tolerance {atol:.0e})"
    if dtype == torch.float16:  # no worse than SDPA's own float16 result, up to float16 rounding
        ref16 = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal).float()
        assert err <= (ref16 - ref).abs().max().item() + 1e-3


@needs_triton
def test_causal_first_query_sees_only_the_first_key():
    q, k, v = _qkv(1, 1, 40, 64, torch.float32, seed=3)
    out = flash_attention_triton(q, k, v, is_causal=True, block_q=16, block_k=16)
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 0], rtol=0, atol=1e-6)  # softmax over one key is 1


@needs_triton
def test_large_scores_do_not_overflow():
    # scores ~ 1e3 would overflow exp without the running max; the online softmax subtracts it
    q, k, v = _qkv(1, 1, 50, 64, torch.float32, seed=4)
    q = q * 30
    out = flash_attention_triton(q, k, v, block_q=16, block_k=16)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=0, atol=1e-4)


@needs_triton
@pytest.mark.parametrize("kwargs,match", [
    (dict(q=torch.zeros(2, 8, 64)), "shape"),
    (dict(k=torch.zeros(1, 1, 8, 32)), "one shape"),
    (dict(q=torch.zeros(1, 1, 8, 48), k=torch.zeros(1, 1, 8, 48), v=torch.zeros(1, 1, 8, 48)), "power of two"),
    (dict(q=torch.zeros(1, 1, 8, 64, dtype=torch.float64)), "float32 or all float16"),
    (dict(block_q=24), "block_q"),
    (dict(block_k=8), "block_k"),
    (dict(is_causal=1), "is_causal"),
])
def test_bad_inputs_name_the_fix(kwargs, match):
    args = dict(q=torch.zeros(1, 1, 8, 64), k=torch.zeros(1, 1, 8, 64), v=torch.zeros(1, 1, 8, 64)) | kwargs
    with pytest.raises(ValueError, match=match):
        flash_attention_triton(**args)


@needs_triton
def test_bench_says_no_gpu_under_the_interpreter(capsys):
    assert triton_flash.main(["bench"]) == 0
    assert capsys.readouterr().out.startswith("no GPU:")


def test_course_lib_never_imports_the_triton_track():
    lib = pathlib.Path(__file__).resolve().parents[1] / "course_lib"
    for path in lib.glob("*.py"):
        if path.name == "triton_flash.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any("triton" in n for n in names), \
                    f"{path.name} imports {names}: the Triton track must stay optional"


def test_import_course_lib_without_triton():
    block = ("import sys, importlib.abc\n"
             "class NoTriton(importlib.abc.MetaPathFinder):\n"
             "    def find_spec(self, name, path, target=None):\n"
             "        if name.split('.')[0] == 'triton': raise ImportError('no triton here')\n"
             "sys.meta_path.insert(0, NoTriton())\n"
             "import course_lib, course_lib.flash\n"
             "try:\n"
             "    import course_lib.triton_flash\n"
             "except ImportError as e:\n"
             "    print(e)\n")
    r = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "pip install -r requirements-triton.txt" in r.stdout
