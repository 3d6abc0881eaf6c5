import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
from transformers.models.llama.modeling_llama import rotate_half as hf_rotate_half

from course_lib.positions import (apply_rope, apply_rotary, rope_angles, rope_cos_sin, rope_frequencies, rotate_half,
                                  sinusoidal_positions)


def llama_rotary(d_head, n_heads=4, base=10000.0):
    """transformers' Llama rotary embedding for a small config: built offline, nothing downloaded."""
    cfg = LlamaConfig(hidden_size=d_head * n_heads, num_attention_heads=n_heads, num_key_value_heads=2,
                      max_position_embeddings=256, rope_theta=base)
    assert cfg.head_dim == d_head
    return LlamaRotaryEmbedding(cfg)


@pytest.mark.parametrize("d_head,base", [(16, 10000.0), (64, 10000.0), (32, 500000.0), (2, 10000.0)])
def test_equals_transformers_llama_rotary(d_head, base):
    g = torch.Generator().manual_seed(d_head)
    rotary = llama_rotary(d_head, base=base)
    torch.testing.assert_close(rope_frequencies(d_head, base), rotary.inv_freq, rtol=0, atol=0)
    # per-sequence positions as with left padding: the first sequence starts two tokens late
    positions = torch.tensor([[0, 0, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6]]) + torch.tensor([[0], [40]])
    q = torch.randn(2, 4, 7, d_head, generator=g)  # (B, H, T, d)
    k = torch.randn(2, 2, 7, d_head, generator=g)  # (B, Hkv, T, d): grouped K/V heads
    cos, sin = rotary(q, positions)  # (B, T, d)
    ours_cos, ours_sin = rope_cos_sin(positions, d_head, base)
    assert torch.equal(ours_cos, cos) and torch.equal(ours_sin, sin)
    ref_q, ref_k = apply_rotary_pos_emb(q, k, cos, sin)
    ours_q, ours_k = apply_rope(q, k, positions, base)
    assert torch.equal(ours_q, ref_q) and torch.equal(ours_k, ref_k)
    assert torch.equal(rotate_half(q), hf_rotate_half(q))


def test_shared_positions_broadcast_over_the_batch():
    q, k = torch.randn(3, 4, 6, 8), torch.randn(3, 1, 6, 8)
    pos = torch.arange(5, 11)
    a = apply_rope(q, k, pos)
    b = apply_rope(q, k, pos.expand(3, 6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # (batch, T, d) tensors take (batch, T) positions too
    q3, k3 = apply_rope(q[:, 0], k[:, 0], pos.expand(3, 6))
    assert torch.equal(q3, a[0][:, 0]) and torch.equal(k3, a[1][:, 0])


def test_rope_matches_the_papers_pairwise_rotation_up_to_a_permutation():
    """RoFormer rotates neighbours (x_2i, x_2i+1); the half-split form pairs x_i with x_i+d/2. Same rotation."""
    d, m = 12, 7
    x = torch.randn(d, dtype=torch.float64)
    theta = [10000 ** (-2 * (i - 1) / d) for i in range(1, d // 2 + 1)]  # the paper's Θ, 1-based
    R = torch.zeros(d, d, dtype=torch.float64)  # R^d_{Θ,m}: block diagonal, one 2x2 rotation per pair
    for i, t in enumerate(theta):
        c, s = math.cos(m * t), math.sin(m * t)
        R[2 * i:2 * i + 2, 2 * i:2 * i + 2] = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    paper = R @ x
    perm = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])  # interleaved -> half-split layout
    ours, _ = apply_rope(x[perm][None], x[perm][None], torch.tensor([m]))
    torch.testing.assert_close(ours[0], paper[perm])


def test_scores_depend_only_on_the_offset():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 32, generator=g, dtype=torch.float64), torch.randn(1, 32, generator=g, dtype=torch.float64)

    def score(m, n):
        qm, _ = apply_rope(q, q, torch.tensor([m]))
        _, kn = apply_rope(k, k, torch.tensor([n]))
        return (qm @ kn.T).item()

    for m, n in [(3, 0), (10, 10), (0, 5), (17, 4)]:
        for s in (1, 13, 250, 4000):
            assert score(m + s, n + s) == pytest.approx(score(m, n), abs=1e-9)
    assert abs(score(5, 0) - score(6, 0)) > 1e-3  # ...and it does depend on the offset


def test_rotation_preserves_norms_and_position_zero_is_the_identity():
    q, k = torch.randn(2, 3, 9, 16, dtype=torch.float64), torch.randn(2, 3, 9, 16, dtype=torch.float64)
    rq, rk = apply_rope(q, k, torch.arange(100, 109))
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    torch.testing.assert_close(rk.norm(dim=-1), k.norm(dim=-1))
    zq, zk = apply_rope(q, k, torch.zeros(9, dtype=torch.long))
    assert torch.equal(zq, q) and torch.equal(zk, k)
    assert rq.dtype == torch.float64  # float64 in, float64 tables and out


def test_ladder_shapes_and_values():
    pos = torch.tensor([[0, 1, 2], [4, 5, 6]])
    theta = rope_frequencies(8)
    assert theta.shape == (4,) and theta[0] == 1.0
    torch.testing.assert_close(theta, torch.tensor([10000 ** (-2 * i / 8) for i in range(4)]))
    ang = rope_angles(pos, 8)
    assert ang.shape == (2, 3, 4)
    torch.testing.assert_close(ang[1, 2], 6 * theta)
    cos, sin = rope_cos_sin(pos, 8, dtype=torch.bfloat16)
    assert cos.shape == sin.shape == (2, 3, 8) and cos.dtype == torch.bfloat16
    x = torch.randn(5, 8)
    c, s = rope_cos_sin(torch.arange(5), 8)
    torch.testing.assert_close(apply_rotary(x, c, s), apply_rope(x, x, torch.arange(5))[0])
    assert torch.equal(rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])), torch.tensor([-3.0, -4.0, 1.0, 2.0]))
    assert torch.equal(rope_angles(range(3), 4), rope_angles(torch.arange(3), 4))  # a range is fine too


def test_sinusoidal_table_is_the_papers_formula():
    n, d = 50, 16
    pe = sinusoidal_positions(n, d, dtype=torch.float64)
    assert pe.shape == (n, d)
    for pos in (0, 1, 7, 49):
        for i in range(d // 2):
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / d)), abs=1e-12)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / d)), abs=1e-12)
    assert sinusoidal_positions(n, d).dtype == torch.float32


def test_sinusoidal_offset_is_a_linear_map():
    """Vaswani et al. §3.5: for any fixed offset k, PE_{pos+k} is a linear function of PE_pos (a rotation per pair)."""
    n, d, k = 40, 8, 5
    pe = sinusoidal_positions(n + k, d, dtype=torch.float64)
    M = torch.linalg.lstsq(pe[:n], pe[k:n + k]).solution  # fitted on all positions at once: one matrix
    torch.testing.assert_close(pe[:n] @ M, pe[k:n + k])


@pytest.mark.parametrize("call,match", [
    (lambda: rope_frequencies(7), "d_head must be an even positive integer, got 7: RoPE rotates pairs of dimensions; "
                                  "use 6 or 8"),
    (lambda: rope_frequencies(0), "d_head must be an even positive integer"),
    (lambda: rope_frequencies(8, base=0.5), "base must be a finite number > 1"),
    (lambda: rope_frequencies(8, base=float("inf")), "base must be a finite number > 1"),
    (lambda: apply_rope(torch.randn(4, 7), torch.randn(4, 7), torch.arange(4)), "the head dimension d .* must be an even positive integer, got 7: RoPE"),
    (lambda: apply_rope(torch.randn(4, 8), torch.randn(4, 8), torch.tensor([-1, 0, 1, 2])),
     "positions must be >= 0 .*minimum of -1; with left padding .*cumsum"),
    (lambda: apply_rope(torch.randn(4, 8), torch.randn(4, 8), torch.arange(4.0)), "integer position ids"),
    (lambda: apply_rope(torch.randn(4, 8), torch.randn(4, 8), torch.arange(3)), "positions has 3 entries .* T=4"),
    (lambda: apply_rope(torch.randn(4, 8), torch.randn(5, 8), torch.arange(4)), "q and k must have the same T and d"),
    (lambda: apply_rope(torch.randn(2, 3, 4, 8), torch.randn(2, 3, 4, 8), torch.zeros(3, 4, dtype=torch.long)),
     "batch=3"),
    (lambda: apply_rope(torch.randn(4, 8), torch.randn(4, 8).double(), torch.arange(4)), "share one dtype"),
    (lambda: apply_rope(torch.ones(4, 8, dtype=torch.long), torch.randn(4, 8), torch.arange(4)), "floating tensor"),
    (lambda: apply_rope(torch.randn(4, 8), torch.randn(4, 8), torch.zeros(1, 1, 4, dtype=torch.long)),
     "\\(T,\\) or \\(batch, T\\)"),
    (lambda: apply_rope(torch.randn(4, 8), torch.randn(4, 8), "0123"), "integer position ids"),
    (lambda: rotate_half(torch.randn(3, 5)), "last dimension is even"),
    (lambda: apply_rotary(torch.randn(3, 8), torch.randn(3, 4), torch.randn(3, 4)), "rope_cos_sin"),
    (lambda: rope_cos_sin(torch.arange(3), 8, dtype=torch.long), "floating torch dtype"),
    (lambda: sinusoidal_positions(10, 7), "d_model must be an even positive integer, got 7: the table interleaves"),
    (lambda: sinusoidal_positions(0, 8), "n_positions must be a positive integer"),
    (lambda: sinusoidal_positions(4, 8, dtype=torch.int32), "floating torch dtype"),
])
def test_bad_arguments_name_the_fix(call, match):
    with pytest.raises(ValueError, match=match):
        call()
