"""Optional Triton track: FlashAttention-2's forward as one Triton kernel.

Notebook 03 tiles attention in PyTorch; this is the same loop written as a GPU kernel.
Each program instance owns one block of BLOCK_Q queries of one (batch, head), keeps
them in on-chip memory (SRAM/registers), and streams the keys and values past them in
blocks of BLOCK_K, carrying the online-softmax state (m, l, acc) as
course_lib.flash.flash_attention_forward does. Scores never reach HBM.
Simplified from Triton's fused-attention tutorial (python/tutorials/06-fused-attention.py,
OpenAI kernel team): no autotuning, no backward, no exp2 trick, no TMA; plain pointer
arithmetic with masks, so any T works (ragged last blocks included).

Not part of the main install (Linux only): pip install -r requirements-triton.txt.
Nothing else in course_lib imports this module. Without a GPU, set TRITON_INTERPRET=1
*before* importing it: Triton then runs the kernel in NumPy on CPU tensors. It is slow,
but it is the same kernel code, and that is how tests/test_triton_flash.py checks it.

    python -m course_lib.triton_flash bench      # Triton kernel vs torch SDPA on a GPU ("no GPU: ..." otherwise)
"""
import argparse
import math
import os
import sys

import torch

try:
    import triton
    import triton.language as tl
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError("course_lib.triton_flash needs Triton (Linux): pip install -r requirements-triton.txt") from e

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # read by triton.jit when the kernel below is defined


@triton.jit
def _flash_forward_kernel(Q, K, V, O, T, scale,  # Q, K, V, O: contiguous (B*H, T, D); T: positions; scale: 1/sqrt(D)
                          D: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, CAUSAL: tl.constexpr):
    i = tl.program_id(0)  # which query block
    head = tl.program_id(1)  # which of the B*H heads
    Q, K, V, O = Q + head * T * D, K + head * T * D, V + head * T * D, O + head * T * D  # this head's (T, D) slices
    rows = i * BLOCK_Q + tl.arange(0, BLOCK_Q)  # (BLOCK_Q,) query positions
    dims = tl.arange(0, D)  # (D,)
    q = tl.load(Q + rows[:, None] * D + dims[None, :], mask=rows[:, None] < T, other=0.0)  # (BLOCK_Q, D), stays on chip

    m = tl.full([BLOCK_Q], float("-inf"), tl.float32)  # running max of each query's scores
    l = tl.zeros([BLOCK_Q], tl.float32)  # running sum of exp(s - m)
    acc = tl.zeros([BLOCK_Q, D], tl.float32)  # unnormalised output, sum of exp(s - m) v

    if CAUSAL:
        end = tl.minimum((i + 1) * BLOCK_Q, T)  # key blocks past the last query of this block are all masked
    else:
        end = T
    for start in range(0, end, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)  # (BLOCK_K,) key positions
        k = tl.load(K + cols[:, None] * D + dims[None, :], mask=cols[:, None] < T, other=0.0)  # (BLOCK_K, D)
        v = tl.load(V + cols[:, None] * D + dims[None, :], mask=cols[:, None] < T, other=0.0)  # (BLOCK_K, D)
        s = tl.dot(q, tl.trans(k), input_precision="ieee") * scale  # (BLOCK_Q, BLOCK_K) scores, fp32 accumulate
        keep = cols[None, :] < T  # the ragged last block reads past T
        if CAUSAL:
            keep = keep & (cols[None, :] <= rows[:, None])  # key j may be seen by query i only if j <= i
        s = tl.where(keep, s, float("-inf"))

        m_new = tl.maximum(m, tl.max(s, 1))  # (BLOCK_Q,); finite: key 0 is in the first block of every row
        p = tl.exp(s - m_new[:, None])  # (BLOCK_Q, BLOCK_K) this tile's unnormalised probabilities
        alpha = tl.exp(m - m_new)  # (BLOCK_Q,) rescales what was summed under the old max (0 on the first block)
        l = l * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")  # (BLOCK_Q, D)
        m = m_new

    out = acc / l[:, None]  # normalise once, at the end
    tl.store(O + rows[:, None] * D + dims[None, :], out.to(O.dtype.element_ty), mask=rows[:, None] < T)


def flash_attention_triton(q, k, v, is_causal=False, block_q=64, block_k=64):
    """softmax(q k^T / sqrt(d)) v for q, k, v of shape (B, H, T, d), by the Triton kernel above.

    float32 or float16 (accumulated in float32; float32 products are exact, not TF32, so slow on a GPU),
    d a power of two in 16..256 (the course uses 64).
    is_causal masks key j > query i (T_q = T_k, so top-left and bottom-right alignment agree).
    Block sizes are powers of two >= 16 (tl.dot's minimum); they need not divide T.
    Tensors must be on a CUDA GPU, or on the CPU with TRITON_INTERPRET=1 set before import."""
    if not isinstance(is_causal, bool):
        raise ValueError(f"is_causal must be True or False, got {is_causal!r}")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be a torch.Tensor of shape (batch, heads, T, d), got {got}")
    if not (q.shape == k.shape == v.shape):
        raise ValueError(f"this kernel needs q, k, v of one shape (B, H, T, d), got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}; use course_lib.flash.flash_attention otherwise")
    if not (q.dtype == k.dtype == v.dtype) or q.dtype not in (torch.float32, torch.float16):
        raise ValueError(f"q, k, v must all be float32 or all float16, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, H, T, d = q.shape
    if T == 0 or d not in (16, 32, 64, 128, 256):
        raise ValueError(f"need T >= 1 and d a power of two in 16..256, got T = {T}, d = {d}")
    for name, b in (("block_q", block_q), ("block_k", block_k)):
        if isinstance(b, bool) or not isinstance(b, int) or b < 16 or b & (b - 1):
            raise ValueError(f"{name} must be a power of two >= 16, got {b!r}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if INTERPRET != (q.device.type == "cpu"):
        raise ValueError(f"tensors are on {q.device} but TRITON_INTERPRET is {'1' if INTERPRET else 'unset'}: "
                         "use CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before importing this module")
    q, k, v = (t.contiguous() for t in (q, k, v))
    out = torch.empty_like(q)
    grid = (triton.cdiv(T, block_q), B * H)  # one program per (query block, head)
    _flash_forward_kernel[grid](q, k, v, out, T, 1.0 / math.sqrt(d),
                                D=d, BLOCK_Q=block_q, BLOCK_K=block_k, CAUSAL=is_causal)
    return out


def bench(sizes=(1024, 2048, 4096, 8192), batch=4, heads=16, d=64, dtype=torch.float16, is_causal=False):
    """Rows (T, triton_ms, sdpa_ms, triton/sdpa) on the GPU: median time from triton.testing.do_bench."""
    rows = []
    for T in sizes:
        q, k, v = (torch.randn(batch, heads, T, d, device="cuda", dtype=dtype) for _ in range(3))
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
        err = (flash_attention_triton(q, k, v, is_causal=is_causal) - ref).abs().max().item()
        t_tr = triton.testing.do_bench(lambda: flash_attention_triton(q, k, v, is_causal=is_causal),
                                       return_mode="median")
        t_sd = triton.testing.do_bench(
            lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=is_causal),
            return_mode="median")
        rows.append(dict(T=T, triton_ms=t_tr, sdpa_ms=t_sd, ratio=t_tr / t_sd, max_abs_err=err))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m course_lib.triton_flash", description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["bench"])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dtype", choices=["float16", "float32"], default="float16")
    p.add_argument("--causal", action="store_true")
    a = p.parse_args(argv)
    if INTERPRET or not torch.cuda.is_available():
        why = ("TRITON_INTERPRET=1 is set (the CPU interpreter); unset it to time the kernel on a GPU" if INTERPRET
               else "torch.cuda.is_available() is False; the benchmark needs a CUDA GPU "
                    "(on CPU, tests/test_triton_flash.py runs the kernel in Triton's interpreter)")
        print(f"no GPU: {why}")
        return 0
    print(f"{torch.cuda.get_device_name()}  B={a.batch} H={a.heads} d=64 {a.dtype} causal={a.causal}")
    print(f"{'T':>6} {'triton ms':>10} {'sdpa ms':>10} {'triton/sdpa':>12} {'max|err|':>9}")
    for r in bench(a.sizes, a.batch, a.heads, 64, getattr(torch, a.dtype), a.causal):
        print(f"{r['T']:>6} {r['triton_ms']:>10.3f} {r['sdpa_ms']:>10.3f} {r['ratio']:>11.2f}x "
              f"{r['max_abs_err']:>9.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
