import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

from course_lib.attention import scaled_dot_product_attention as naive_attention
from course_lib.flash import (
    FlashAttentionFunction,
    TwoLevelMemory,
    flash_attention,
    flash_attention_backward,
    flash_attention_forward,
    flash_attention_io,
    flash_block_sizes,
    flash_decoding,
    merge_attention_states,
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
        (dict(k=k.repeat(1, 2, 1, 1)[:, :3], v=v.repeat(1, 2, 1, 1)[:, :3]), "multiple of the number of K/V heads"),
        (dict(k=k.expand(2, 2, 5, 8), v=v.expand(2, 2, 5, 8)), "same batch size"),
        (dict(v=v[:, :1]), "same number of K/V heads"),
        (dict(causal_alignment="bottom-right"), "causal_alignment must be 'top_left'"),
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



# ---- grouped K/V heads and the causal alignment --------------------------------------------------

def _allowed(T_q, T_k, causal, alignment):
    """The explicit boolean mask (T_q, T_k), True = may attend."""
    if not causal:
        return torch.ones(T_q, T_k, dtype=torch.bool)
    offset = T_k - T_q if alignment == "bottom_right" else 0
    return torch.arange(T_k)[None, :] <= torch.arange(T_q)[:, None] + offset


def _reference(q, k, v, causal=False, alignment="top_left", scale=None):
    """Plain attention: K/V heads repeated, an explicit boolean mask through a naive softmax; a row that may
    attend to no key gives zeros (with zero gradients)."""
    G = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(G, dim=1), v.repeat_interleave(G, dim=1)
    allowed = _allowed(q.shape[-2], k.shape[-2], causal, alignment)
    none = ~allowed.any(-1, keepdim=True)  # (T_q, 1)
    S = q @ k.mT * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    S = S.masked_fill(~allowed, -math.inf).masked_fill(none, 0.0)
    return torch.softmax(S, dim=-1).masked_fill(none, 0.0) @ v


def _grouped(B, H, H_kv, T_q, T_k, d, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T_q, d, generator=g).to(dtype), torch.randn(B, H_kv, T_k, d, generator=g).to(dtype),
            torch.randn(B, H_kv, T_k, d, generator=g).to(dtype))


# (T_q, T_k, block_q, block_k, H, H_kv): odd lengths, T_q < T_k and T_q > T_k, blocks that do not divide them,
# multi-head, grouped-query and multi-query heads
GRID_SHAPES = [(1, 19, 4, 8, 4, 1), (5, 23, 2, 7, 4, 2), (21, 6, 8, 4, 6, 3), (13, 13, 5, 6, 2, 2)]
# max |ours - ref| / max(max |ref|, 1) for the output and each gradient, against a float64 reference on the same
# inputs (the floor of 1: a gradient that is 0 exactly, as dq of a query that sees one key, is matched absolutely)
GRID_TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


def _relative_error(ours, ref):
    return ((ours.double() - ref).abs().max() / ref.abs().max().clamp_min(1.0)).item()


@pytest.mark.parametrize("alignment", [None, "top_left", "bottom_right"])  # None: not causal
@pytest.mark.parametrize("d", [32, 64, 128, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_grid_forward_and_backward_against_an_explicit_mask(dtype, d, alignment):
    causal = alignment is not None
    for i, (T_q, T_k, bq, bk, H, H_kv) in enumerate(GRID_SHAPES):
        q, k, v = _grouped(1, H, H_kv, T_q, T_k, d, dtype, seed=d + i)
        dout = torch.randn(1, H, T_q, d, generator=torch.Generator().manual_seed(i)).to(dtype)
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = flash_attention(*leaves, is_causal=causal, block_q=bq, block_k=bk,
                              causal_alignment=alignment or "top_left")
        out.backward(dout)
        ref_leaves = [t.double().requires_grad_() for t in (q, k, v)]
        ref = _reference(*ref_leaves, causal=causal, alignment=alignment)
        ref.backward(dout.double())
        assert out.dtype == dtype and all(t.grad.dtype == dtype for t in leaves)
        for name, ours, theirs in zip(("out", "dq", "dk", "dv"), [out] + [t.grad for t in leaves],
                                      [ref] + [t.grad for t in ref_leaves]):
            assert ours.shape == theirs.shape
            err = _relative_error(ours, theirs)
            assert err < GRID_TOLERANCE[dtype], (name, T_q, T_k, H, H_kv, err)


@pytest.mark.parametrize("H,H_kv", [(4, 1), (6, 2), (3, 3)])
@pytest.mark.parametrize("causal", [False, True])
def test_grouped_heads_match_sdpa_enable_gqa(H, H_kv, causal):
    q, k, v = _grouped(2, H, H_kv, 11, 17, 8, seed=H)
    dout = torch.randn(2, H, 11, 8, dtype=torch.float64)
    grads = []
    for f in (lambda *a: flash_attention(*a, is_causal=causal, block_q=4, block_k=5),
              lambda *a: F.scaled_dot_product_attention(*a, is_causal=causal, enable_gqa=True)):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = f(*leaves)
        out.backward(dout)
        grads.append([out] + [t.grad for t in leaves])
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)


def test_grouped_heads_do_not_materialise_repeated_kv():
    q, k, v = _grouped(1, 8, 1, 1, 4096, 64, dtype=torch.float32)  # MQA, one query: decoding
    peak = peak_memory(flash_attention_forward, q, k, v)[1]
    repeated = 2 * k.numel() * 8 * 4  # K and V repeated for 8 query heads, float32
    assert peak < k.numel() * 4 / 4, (peak, repeated)  # a quarter of K alone: nothing K-sized is allocated


def test_bottom_right_matches_torch_causal_lower_right_and_differs_from_top_left():
    q, k, v = _qkv(1, 2, 3, 9, 8, 8)
    ours = flash_attention(q, k, v, is_causal=True, block_q=2, block_k=4, causal_alignment="bottom_right")
    torch.testing.assert_close(ours, F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(3, 9)),
                               atol=1e-12, rtol=0)
    top_left = flash_attention(q, k, v, is_causal=True, block_q=2, block_k=4)
    torch.testing.assert_close(top_left, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-12, rtol=0)
    assert (ours - top_left).abs().max() > 0.1, "top-left hides the newest keys from the new queries"
    square = _qkv(1, 2, 6, 6, 8, 8)
    torch.testing.assert_close(flash_attention(*square, is_causal=True, causal_alignment="bottom_right"),
                               flash_attention(*square, is_causal=True), atol=0, rtol=0)


def test_queries_that_see_no_key_give_zeros_and_finite_gradients():
    q, k, v = _grouped(1, 4, 2, 7, 3, 5, seed=2)  # bottom-right, T_q - T_k = 4 queries see nothing
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = flash_attention(*leaves, is_causal=True, block_q=3, block_k=2, causal_alignment="bottom_right")
    out.backward(torch.ones_like(out))
    assert (out[:, :, :4] == 0).all() and (out[:, :, 4:] != 0).all()
    assert all(torch.isfinite(t.grad).all() for t in leaves) and (leaves[0].grad[:, :, :4] == 0).all()
    _, lse = flash_attention_forward(q, k, v, is_causal=True, block_q=3, block_k=2, causal_alignment="bottom_right")
    assert torch.isneginf(lse[:, :, :4]).all() and torch.isfinite(lse[:, :, 4:]).all()
    torch.testing.assert_close(out, _reference(q, k, v, True, "bottom_right"), atol=1e-12, rtol=0)


@pytest.mark.parametrize("T_q,T_k,H,H_kv,alignment", [(4, 7, 4, 2, "bottom_right"), (6, 3, 2, 1, "bottom_right"),
                                                       (5, 5, 3, 1, "top_left"), (3, 6, 4, 1, "top_left")])
def test_gradcheck_grouped_heads_and_alignments(T_q, T_k, H, H_kv, alignment):
    q, k, v = (t.requires_grad_() for t in _grouped(1, H, H_kv, T_q, T_k, 3, seed=7))
    assert torch.autograd.gradcheck(lambda a, b, c: flash_attention(
        a, b, c, is_causal=True, block_q=2, block_k=2, causal_alignment=alignment), (q, k, v))


def test_the_autograd_function_keeps_its_older_positional_call():
    q, k, v = (t.requires_grad_() for t in _qkv(1, 2, 5, 6, 4, 4))
    FlashAttentionFunction.apply(q, k, v, True, None, 2, 4).sum().backward()  # no causal_alignment: top-left
    ref = [t.clone().detach().requires_grad_() for t in (q, k, v)]
    naive_attention(*ref, is_causal=True).sum().backward()
    for ours, theirs in zip((q, k, v), ref):
        torch.testing.assert_close(ours.grad, theirs.grad, atol=1e-12, rtol=0)


# ---- merging softmax states, FlashDecoding ---------------------------------------------------------

def _state(q, k, v):
    """(out, lse) of plain attention of q over the keys k: one partial state."""
    S = q @ k.mT / math.sqrt(q.shape[-1])
    return torch.softmax(S, dim=-1) @ v, S.logsumexp(-1)


def _random_cuts(T, n, g):
    return [0] + sorted(torch.randperm(T - 1, generator=g)[:n - 1].add(1).tolist()) + [T]


@pytest.mark.parametrize("seed", range(6))
def test_merging_states_over_random_splits_equals_the_full_softmax(seed):
    g = torch.Generator().manual_seed(seed)
    T = int(torch.randint(2, 60, (), generator=g))
    q, k, v = _qkv(2, 3, 4, T, 8, 5, seed=seed)
    k, v = k * 3, v  # larger scores: parts with very different maxima
    cuts = _random_cuts(T, int(torch.randint(2, min(T, 6) + 1, (), generator=g)), g)
    parts = [_state(q, k[..., a:b, :], v[..., a:b, :]) for a, b in zip(cuts, cuts[1:])]
    out, lse = parts[0]
    for part in parts[1:]:
        out, lse = merge_attention_states(out, lse, *part)
    full_out, full_lse = _state(q, k, v)
    torch.testing.assert_close(out, full_out, atol=1e-13, rtol=0)
    torch.testing.assert_close(lse, full_lse, atol=1e-13, rtol=0)
    # associative and commutative: any tree, any order
    a, b, c = _state(q, k[..., :1, :], v[..., :1, :]), _state(q, k[..., 1:2, :], v[..., 1:2, :]), \
        _state(q, k[..., 2:, :], v[..., 2:, :]) if T > 2 else _state(q, k, v)
    left = merge_attention_states(*merge_attention_states(*a, *b), *c)
    right = merge_attention_states(*a, *merge_attention_states(*b, *c))
    swapped = merge_attention_states(*c, *merge_attention_states(*b, *a))
    for x, y, z in zip(left, right, swapped):
        torch.testing.assert_close(x, y, atol=1e-13, rtol=0)
        torch.testing.assert_close(x, z, atol=1e-13, rtol=0)


def test_merging_with_an_empty_state_is_the_identity():
    q, k, v = _qkv(1, 2, 3, 5, 4, 4)
    out, lse = _state(q, k, v)
    empty = (torch.zeros_like(out), torch.full_like(lse, -math.inf))
    for merged in (merge_attention_states(out, lse, *empty), merge_attention_states(*empty, out, lse)):
        torch.testing.assert_close(merged[0], out, atol=0, rtol=0)
        torch.testing.assert_close(merged[1], lse, atol=0, rtol=0)
    both = merge_attention_states(*empty, *empty)
    assert (both[0] == 0).all() and torch.isneginf(both[1]).all()
    half = merge_attention_states(out.half(), lse.float(), out.half(), lse.float())
    assert half[0].dtype == torch.float16 and half[1].dtype == torch.float32


@pytest.mark.parametrize("num_splits", [1, 3, 7, 500])
@pytest.mark.parametrize("H,H_kv", [(8, 2), (4, 1), (2, 2)])
def test_flash_decoding_matches_sdpa(num_splits, H, H_kv):
    q, k, v = _grouped(2, H, H_kv, 1, 101, 16, seed=num_splits)  # one new query against a cache of 101
    out, lse = flash_decoding(q, k, v, num_splits=num_splits, return_lse=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, enable_gqa=True), atol=1e-12, rtol=0)
    S = q @ k.repeat_interleave(H // H_kv, 1).mT / 4
    torch.testing.assert_close(lse, S.logsumexp(-1), atol=1e-12, rtol=0)


@pytest.mark.parametrize("T_q,T_k", [(4, 37), (9, 5)])
def test_flash_decoding_bottom_right_for_a_block_of_new_tokens(T_q, T_k):
    q, k, v = _grouped(1, 6, 3, T_q, T_k, 8, seed=T_q)
    ours = flash_decoding(q, k, v, num_splits=4, is_causal=True)
    torch.testing.assert_close(ours, _reference(q, k, v, True, "bottom_right"), atol=1e-12, rtol=0)
    torch.testing.assert_close(ours, flash_attention(q, k, v, is_causal=True, causal_alignment="bottom_right"),
                               atol=1e-12, rtol=0)
    torch.testing.assert_close(flash_decoding(q, k, v, num_splits=3, is_causal=True, causal_alignment="top_left"),
                               _reference(q, k, v, True, "top_left"), atol=1e-12, rtol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float16, 2e-3), (torch.bfloat16, 1.6e-2)],
                         ids=str)
def test_flash_decoding_half_precision(dtype, tol):
    q, k, v = _grouped(1, 8, 2, 1, 300, 64, dtype=dtype, seed=4)
    out = flash_decoding(q, k, v, num_splits=5)
    assert out.dtype == dtype
    assert _relative_error(out, _reference(q.double(), k.double(), v.double())) < tol


def test_merge_and_decoding_errors():
    q, k, v = _qkv(1, 2, 1, 9, 4, 4)
    out, lse = _state(q, k, v)
    for args, match in [((out, lse, out.tolist(), lse), "must be two torch.Tensors"),
                        ((out, lse[..., :0], out, lse), "lse must have out's shape without its last dimension"),
                        ((out, lse, out.long(), lse), "floating"),
                        ((out, lse, out[:, :1], lse[:, :1]), "same queries")]:
        with pytest.raises(ValueError, match=match):
            merge_attention_states(*args)
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="num_splits must be a positive integer"):
            flash_decoding(q, k, v, num_splits=bad)
    with pytest.raises(ValueError, match="multiple of the number of K/V heads"):
        flash_decoding(q, k.repeat(1, 2, 1, 1)[:, :3], v.repeat(1, 2, 1, 1)[:, :3])
    with pytest.raises(ValueError, match="causal_alignment must be"):
        flash_decoding(q, k, v, causal_alignment="right")


@pytest.mark.parametrize("bq, bk", [(8, 8), (64, 16), (16, 64), (100, 7), (192, 16)])
def test_io_with_chosen_blocks_counts_the_formula_and_stays_attention(bq, bk):
    """Notebook 03's block explorer: any blocks that fit give attention, and K/V are read once per query block."""
    T, T_k, d, d_v, M = 300, 217, 64, 48, 32768
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(T, d, dtype=torch.float64, generator=g), torch.randn(T_k, d, dtype=torch.float64, generator=g)
    v = torch.randn(T_k, d_v, dtype=torch.float64, generator=g)
    out, mem = flash_attention_io(q, k, v, M, block_q=bq, block_k=bk)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    assert mem.accesses == T * d + math.ceil(T / bq) * T_k * (d + d_v) + T * d_v + T
    assert mem.peak_sram <= M


def test_io_blocks_that_do_not_fit_say_so():
    q = torch.randn(512, 64, dtype=torch.float64)
    with pytest.raises(ValueError, match="does not fit in an SRAM of 16384"):
        flash_attention_io(q, q, q, 16384, block_q=256, block_k=64)
    with pytest.raises(ValueError, match="block_q must be a positive integer"):
        flash_attention_io(q, q, q, 16384, block_q=0)
