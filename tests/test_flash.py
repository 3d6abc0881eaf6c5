import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.attention import scaled_dot_product_attention as naive_attention
from course_lib.flash import (
    TwoLevelMemory,
    flash_attention,
    flash_attention_backward,
    flash_attention_forward,
    flash_attention_io,
    flash_block_sizes,
    online_softmax,
    standard_attention_io,
)
from course_lib.memory import peak_memory


def _qkv(B, H, T_q, T_k, d, d_v, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T_q, d, generator=g, dtype=dtype),
            torch.randn(B, H, T_k, d, generator=g, dtype=dtype),
            torch.randn(B, H, T_k, d_v, generator=g, dtype=dtype))


def _random_cases(n, seed):
    """(B, H, T_q, T_k, d, d_v, block_q, block_k, is_causal): awkward sizes, blocks that do not divide T."""
    g = torch.Generator().manual_seed(seed)
    r = lambda lo, hi: int(torch.randint(lo, hi + 1, (), generator=g))  # noqa: E731
    cases = []
    for i in range(n):
        T_q, T_k = r(1, 70), r(1, 70)
        causal = i % 2 == 1
        cases.append((r(1, 2), r(1, 3), T_q, T_k, r(1, 40), r(1, 40), r(1, 33), r(1, 33), causal))
    return cases


@pytest.mark.parametrize("B,H,T_q,T_k,d,d_v,bq,bk,causal", _random_cases(24, seed=1))
def test_forward_matches_sdpa_float64(B, H, T_q, T_k, d, d_v, bq, bk, causal):
    q, k, v = _qkv(B, H, T_q, T_k, d, d_v, seed=T_q * 97 + T_k)
    out, lse = flash_attention_forward(q, k, v, is_causal=causal, block_q=bq, block_k=bk)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=0)
    scores = q @ k.mT / math.sqrt(d)
    if causal:
        scores = scores.masked_fill(torch.ones(T_q, T_k, dtype=torch.bool).triu(1), -math.inf)
    torch.testing.assert_close(lse, scores.logsumexp(-1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T_q,T_k", [(600, 600), (300, 1100), (777, 513)])
def test_forward_float32_default_blocks_relative_error(T_q, T_k, causal):
    q, k, v = _qkv(1, 2, T_q, T_k, 64, 64, dtype=torch.float32, seed=3)
    out = flash_attention(q, k, v, is_causal=causal)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    rel = ((out - ref).abs().max() / ref.abs().max()).item()
    assert rel < 1e-5, rel
    assert out.dtype == torch.float32 and out.shape == ref.shape


def test_scale_and_blocks_larger_than_the_sequence():
    q, k, v = _qkv(2, 2, 5, 6, 8, 3)
    for scale in (0.3, 2.0):
        torch.testing.assert_close(flash_attention(q, k, v, scale=scale, block_q=64, block_k=1000),
                                   F.scaled_dot_product_attention(q, k, v, scale=scale), atol=1e-12, rtol=0)


def test_non_contiguous_inputs():
    q, k, v = (torch.randn(2, 9, 3, 8, dtype=torch.float64).transpose(1, 2) for _ in range(3))  # (B, T, H, d) as (B, H, T, d)
    assert not q.is_contiguous()
    torch.testing.assert_close(flash_attention(q, k, v, is_causal=True, block_q=2, block_k=4),
                               F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-12, rtol=0)


@pytest.mark.parametrize("B,H,T_q,T_k,d,d_v,bq,bk,causal", _random_cases(8, seed=2))
def test_gradients_match_autograd_through_naive(B, H, T_q, T_k, d, d_v, bq, bk, causal):
    q, k, v = _qkv(B, H, T_q, T_k, d, d_v, seed=11)
    dout = torch.randn(B, H, T_q, d_v, dtype=torch.float64)
    grads = []
    for f in (lambda *a: flash_attention(*a, is_causal=causal, block_q=bq, block_k=bk),
              lambda *a: naive_attention(*a, is_causal=causal)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        f(*leaves).backward(dout)
        grads.append([t.grad for t in leaves])
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("T_q,T_k,causal,bq,bk", [(5, 5, False, 2, 3), (6, 6, True, 4, 2), (3, 7, False, 2, 2),
                                                   (7, 4, True, 3, 3)])
def test_gradcheck_float64(T_q, T_k, causal, bq, bk):
    q, k, v = (t.requires_grad_() for t in _qkv(1, 2, T_q, T_k, 3, 2, seed=5))
    assert torch.autograd.gradcheck(
        lambda a, b, c: flash_attention(a, b, c, is_causal=causal, block_q=bq, block_k=bk), (q, k, v))


def test_backward_function_directly_and_half_precision():
    q, k, v = _qkv(1, 2, 9, 9, 8, 8, dtype=torch.float32)
    dout = torch.randn(1, 2, 9, 8)
    out, lse = flash_attention_forward(q, k, v, block_q=4, block_k=4)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    F.scaled_dot_product_attention(*leaves).backward(dout)
    for ours, t in zip(flash_attention_backward(dout, q, k, v, out, lse, block_q=4, block_k=4), leaves):
        torch.testing.assert_close(ours, t.grad, atol=1e-5, rtol=1e-5)
    qh, kh, vh = (t.to(torch.bfloat16).requires_grad_() for t in (q, k, v))  # accumulated in float32
    out_h = flash_attention(qh, kh, vh, block_q=4, block_k=4)
    assert out_h.dtype == torch.bfloat16
    torch.testing.assert_close(out_h.float(), F.scaled_dot_product_attention(q, k, v), atol=3e-2, rtol=3e-2)
    out_h.sum().backward()
    assert qh.grad.dtype == torch.bfloat16 and torch.isfinite(qh.grad.float()).all()


def test_clear_errors():
    q, k, v = _qkv(1, 2, 4, 5, 8, 8, dtype=torch.float32)
    bad = [
        (dict(q=q[0]), "batch, heads, T, d"),
        (dict(k=k.double()), "share one dtype"),
        (dict(v=v.to("meta")), "one device"),
        (dict(q=q.int()), "floating"),
        (dict(k=k[..., :4]), "same last dimension"),
        (dict(v=v[:, :, :3]), "same number of positions"),
        (dict(k=k[:, :1], v=v[:, :1]), "same \\(batch, heads\\)"),
        (dict(q=q[:, :, :0]), "at least one query"),
        (dict(block_q=0), "block_q must be a positive integer"),
        (dict(block_k=-3), "block_k must be a positive integer"),
        (dict(block_k=2.5), "block_k must be a positive integer"),
        (dict(block_q=True), "block_q must be a positive integer"),
        (dict(scale=float("nan")), "scale must be a finite number"),
        (dict(scale="0.1"), "scale must be a finite number"),
        (dict(is_causal=1), "is_causal must be True or False"),
        (dict(is_causal="yes"), "is_causal must be True or False"),
    ]
    for change, message in bad:
        args = dict(q=q, k=k, v=v)
        args.update(change)
        for fn in (flash_attention, flash_attention_forward):
            with pytest.raises(ValueError, match=message):
                fn(**args)
    out, lse = flash_attention_forward(q, k, v)
    with pytest.raises(ValueError, match="lse must have shape"):
        flash_attention_backward(out, q, k, v, out, lse[..., :2])
    with pytest.raises(ValueError, match="dout and out"):
        flash_attention_backward(out[:, :, :2], q, k, v, out, lse)
    with pytest.raises(ValueError, match="dout must be a torch.Tensor"):
        flash_attention_backward(out.tolist(), q, k, v, out, lse)
    with pytest.raises(ValueError, match="lse must be a torch.Tensor"):
        flash_attention_backward(out, q, k, v, out, None)
    with pytest.raises(ValueError, match="block must be a positive integer"):
        online_softmax(torch.randn(4), 0)


@pytest.mark.parametrize("x", [[1.0, 2.0], torch.tensor(3.0), torch.arange(4)])
def test_online_softmax_needs_a_floating_tensor(x):
    with pytest.raises(ValueError, match="x must be a floating torch.Tensor with at least one dimension"):
        online_softmax(x, 2)


def test_online_softmax_matches_torch_even_for_large_scores():
    x = torch.randn(3, 4, 101, dtype=torch.float64) * 50  # exp(x) alone would overflow
    for block in (1, 7, 101, 500):
        torch.testing.assert_close(online_softmax(x, block), torch.softmax(x, -1), atol=1e-14, rtol=0)


def test_naive_memory_grows_quadratically_and_tiled_linearly():
    peaks = {}
    for T in (256, 512):
        q, k, v = _qkv(1, 1, T, T, 32, 32, dtype=torch.float32)
        peaks[T] = (peak_memory(naive_attention, q, k, v)[1],
                    peak_memory(flash_attention_forward, q, k, v, block_q=32, block_k=64)[1])
    (n1, t1), (n2, t2) = peaks[256], peaks[512]
    assert n1 >= 2 * 256 * 256 * 4, "naive holds at least the scores and the weights, T x T each"
    assert 3.5 < n2 / n1 < 4.5, "naive ~ T^2"
    assert 1.5 < t2 / t1 < 2.5, "tiled ~ T"
    assert t2 < n2 / 20


def test_io_simulation_outputs_and_counts():
    T, d, M = 96, 16, 4096
    q, k, v = (t[0, 0] for t in _qkv(1, 1, T, T, d, d, seed=9))
    ref = F.scaled_dot_product_attention(q, k, v)
    out_s, mem_s = standard_attention_io(q, k, v, M)
    out_f, mem_f = flash_attention_io(q, k, v, M)
    torch.testing.assert_close(out_s, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(out_f, ref, atol=1e-12, rtol=0)
    # the largest working set is the one the tiling was sized for (fits() already refuses more than M)
    b = math.isqrt(d * d + M) - d
    br, bc = flash_block_sizes(d, M)
    assert mem_s.peak_sram == 2 * b * d + b * b  # a Q and a K tile beside an S tile
    assert mem_f.peak_sram == 2 * br * d + 2 * br + 2 * bc * d + br * bc  # Q_i, O_i, m, l, K_j, V_j, S
    # standard: S written once and read twice, P written once and read once, plus Q/K/V/O
    n_blocks = math.ceil(T / b)
    assert mem_s.writes == 2 * T * T + T * d
    assert mem_s.reads == 3 * T * T + T * d + 2 * n_blocks * T * d
    # flash: Q once, K and V once per query block; writes only O and the log-sum-exp
    assert mem_f.reads == T * d + math.ceil(T / br) * 2 * T * d
    assert mem_f.writes == T * d + T
    assert mem_f.accesses < mem_s.accesses / 3


def test_io_flash_traffic_falls_as_sram_grows_and_errors():
    q, k, v = (t[0, 0] for t in _qkv(1, 1, 128, 128, 8, 8, seed=4))
    acc = [flash_attention_io(q, k, v, M)[1].accesses for M in (512, 1024, 2048)]
    assert acc[0] > 1.6 * acc[1] > 1.6 ** 2 * acc[2], acc
    with pytest.raises(ValueError, match="too small"):
        flash_attention_io(q, k, v, 20)
    with pytest.raises(ValueError, match="too small"):
        standard_attention_io(q, k, v, 10)
    with pytest.raises(ValueError, match="one head"):
        flash_attention_io(q[None], k, v, 4096)
    mem = TwoLevelMemory(10)
    with pytest.raises(ValueError, match="does not fit"):
        mem.fits(torch.zeros(3, 4))


@pytest.mark.parametrize("call,match", [
    (lambda q: TwoLevelMemory(0), "sram_size must be a positive number of elements"),
    (lambda q: TwoLevelMemory(4096.0), "sram_size must be a positive number of elements"),
    (lambda q: TwoLevelMemory(16).read([1.0, 2.0]), "read takes a torch.Tensor"),
    (lambda q: TwoLevelMemory(16).write(torch.zeros(4), [1.0]), "write takes two torch.Tensors"),
    (lambda q: TwoLevelMemory(16).write(torch.zeros(4), torch.ones(1)), "must have the shape of the HBM view"),
    (lambda q: TwoLevelMemory(16).fits(-5), "non-negative integer element counts"),
    (lambda q: TwoLevelMemory(16).fits(2.5), "non-negative integer element counts"),
    (lambda q: standard_attention_io(q, q, q, -100), "sram_size must be a positive number"),
    (lambda q: standard_attention_io(q, q, q, 4096.0), "sram_size must be a positive number"),
    (lambda q: flash_attention_io(q, q, q, 0), "sram_size must be a positive number"),
    (lambda q: flash_block_sizes(0, 4096), "d must be a positive integer"),
    (lambda q: flash_block_sizes(8, "4096"), "sram_size must be a positive number"),
    (lambda q: flash_attention_io(q.long(), q.long(), q.long(), 4096), "must be a floating tensor"),
    (lambda q: flash_attention_io(q, q.double(), q, 4096), "share one dtype"),
    (lambda q: flash_attention_io(q[:0], q, q, 4096), "at least one query"),
    (lambda q: standard_attention_io(q, q[:0], q[:0], 4096), "at least one query, one key"),
    (lambda q: standard_attention_io(q, q[:, :4], q, 4096), "q and k need the same d"),
])
def test_io_simulation_bad_arguments(call, match):
    q = torch.randn(16, 8)
    with pytest.raises(ValueError, match=match):
        call(q)
