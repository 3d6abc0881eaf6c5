import math

import pytest
import torch
import torch.nn.functional as F

from course_lib.attention import (MultiHeadAttention, causal_mask, convert_mha_to_gqa, padding_mask,
                                  scaled_dot_product_attention)
from course_lib.kv_cache import KVCache
from course_lib.positions import apply_rope

SHAPES = [  # (batch dims, T_q, T_k, d, d_v)
    ((), 5, 5, 8, 8),
    ((3,), 4, 7, 16, 5),
    ((2, 3), 9, 6, 4, 12),
    ((2, 4), 1, 11, 32, 32),
]


@pytest.mark.parametrize("batch,T_q,T_k,d,d_v", SHAPES)
def test_matches_torch_sdpa_plain(batch, T_q, T_k, d, d_v):
    g = torch.Generator().manual_seed(T_q * 100 + T_k)
    q = torch.randn(*batch, T_q, d, generator=g)
    k = torch.randn(*batch, T_k, d, generator=g)
    v = torch.randn(*batch, T_k, d_v, generator=g)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, scale=0.3),
                               F.scaled_dot_product_attention(q, k, v, scale=0.3))


@pytest.mark.parametrize("batch,T_q,T_k,d,d_v", SHAPES)
def test_matches_torch_sdpa_masks(batch, T_q, T_k, d, d_v):
    g = torch.Generator().manual_seed(7 + T_q)
    q = torch.randn(*batch, T_q, d, generator=g, dtype=torch.float64)
    k = torch.randn(*batch, T_k, d, generator=g, dtype=torch.float64)
    v = torch.randn(*batch, T_k, d_v, generator=g, dtype=torch.float64)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, is_causal=True), ref)
    bool_mask = torch.rand(T_q, T_k, generator=g) > 0.3
    bool_mask[:, 0] = True  # every query may attend somewhere
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, attn_mask=bool_mask),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask))
    add_mask = torch.randn(*batch, T_q, T_k, generator=g, dtype=torch.float64)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, attn_mask=add_mask),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=add_mask))


def test_fully_masked_row_gives_zero_like_torch():
    q, k, v = torch.randn(1, 3, 4), torch.randn(1, 5, 4), torch.randn(1, 5, 4)
    m = torch.ones(3, 5, dtype=torch.bool)
    m[1] = False
    out, w = scaled_dot_product_attention(q, k, v, attn_mask=m, return_weights=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=m))
    assert torch.all(w[0, 1] == 0) and not torch.isnan(out).any()


def test_fully_masked_rows_have_finite_gradients():
    # left-padded batches have query rows that may attend to nothing; training through them must not make NaN
    q, k, v = (torch.randn(1, 3, 4, requires_grad=True) for _ in range(3))
    m = torch.ones(3, 3, dtype=torch.bool)
    m[0] = False
    scaled_dot_product_attention(q, k, v, attn_mask=m).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_weights_are_rows_of_probabilities_and_causal_zero_above_diagonal():
    q, k, v = torch.randn(2, 6, 8), torch.randn(2, 6, 8), torch.randn(2, 6, 8)
    out, w = scaled_dot_product_attention(q, k, v, is_causal=True, return_weights=True)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 6))
    assert torch.all(w.triu(1) == 0)
    torch.testing.assert_close(out, w @ v)


def test_padding_mask_ignores_padded_keys():
    B, T, d = 2, 5, 4
    q, k, v = torch.randn(B, 1, T, d), torch.randn(B, 1, T, d), torch.randn(B, 1, T, d)
    mask = padding_mask([3, 5], T)
    assert mask.shape == (2, 1, 1, 5)
    out = scaled_dot_product_attention(q, k, v, attn_mask=mask)
    # changing the padded keys/values of sequence 0 must not change its output
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 3:] = 100.0
    v2[0, :, 3:] = -100.0
    torch.testing.assert_close(scaled_dot_product_attention(q, k2, v2, attn_mask=mask), out)


def test_causal_mask_offset_for_cached_decoding():
    assert torch.equal(causal_mask(2, 4, offset=2), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))


def test_dropout_zeroes_weights_and_rescales_the_rest():
    torch.manual_seed(0)
    q = k = v = torch.randn(1, 16, 8)
    _, w = scaled_dot_product_attention(q, k, v, return_weights=True)
    out, w_drop = scaled_dot_product_attention(q, k, v, dropout_p=0.5, return_weights=True)
    kept = w_drop != 0
    assert 0 < kept.sum() < kept.numel()  # some weights dropped, some kept
    torch.testing.assert_close(w_drop[kept], 2 * w[kept])  # the kept ones scaled by 1 / (1 - p)
    torch.testing.assert_close(out, w_drop @ v)


def test_gradcheck_float64():
    q = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: scaled_dot_product_attention(a, b, c), (q, k, v))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(q=torch.randn(2, 3, 4), k=torch.randn(2, 3, 5), v=torch.randn(2, 3, 5)), "same last dimension"),
        (dict(q=torch.randn(2, 3, 4), k=torch.randn(2, 3, 4), v=torch.randn(2, 6, 4)), "number of positions"),
        (dict(q=torch.randn(2, 3, 4), k=torch.randn(3, 3, 4), v=torch.randn(3, 3, 4)), "do not broadcast"),
        (dict(q=torch.randn(4), k=torch.randn(3, 4), v=torch.randn(3, 4)), "at least 2 dims"),
        (dict(q=torch.randn(3, 4), k=torch.randn(3, 4).double(), v=torch.randn(3, 4)), "one dtype"),
        (dict(q=torch.ones(3, 4, dtype=torch.long), k=torch.ones(3, 4, dtype=torch.long),
              v=torch.ones(3, 4, dtype=torch.long)), "floating"),
        (dict(q=torch.randn(3, 4), k=torch.randn(3, 4), v=torch.randn(3, 4), attn_mask=torch.ones(2, 2, dtype=torch.bool)),
         "does not broadcast"),
        (dict(q=torch.randn(3, 4), k=torch.randn(3, 4), v=torch.randn(3, 4), attn_mask=torch.zeros(3, 3).double()),
         "dtype"),
        (dict(q=torch.randn(3, 4), k=torch.randn(3, 4), v=torch.randn(3, 4),
              attn_mask=torch.ones(3, 3, dtype=torch.bool), is_causal=True), "not both"),
        (dict(q=torch.randn(3, 4), k=torch.randn(3, 4), v=torch.randn(3, 4), dropout_p=1.5), "dropout_p"),
        (dict(q=torch.randn(3, 4), k=torch.randn(3, 4, device="meta"), v=torch.randn(3, 4)), "one device"),
        (dict(q=torch.randn(3, 4), k=torch.randn(3, 4), v=torch.randn(3, 4), is_causal=1), "is_causal must be True"),
        (dict(q=torch.randn(3, 4), k=torch.randn(3, 4), v=torch.randn(3, 4), dropout_p=True), "dropout_p must be"),
        (dict(q=torch.randn(3, 4), k=torch.randn(3, 4), v=torch.randn(3, 4), dropout_p="0.1"), "dropout_p must be"),
        (dict(q=torch.randn(3, 4), k=torch.randn(3, 4), v=torch.randn(3, 4), scale=float("inf")),
         "scale must be a finite number"),
        (dict(q=torch.randn(3, 4), k=torch.randn(3, 4), v=torch.randn(3, 4), scale="0.5"),
         "scale must be a finite number"),
    ],
)
def test_bad_input_names_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        scaled_dot_product_attention(**kwargs)


def _copy_into_torch_mha(ours, d_model, n_heads):
    ref = torch.nn.MultiheadAttention(d_model, n_heads, bias=False, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)  # same [W_q; W_k; W_v] layout
        ref.out_proj.weight.copy_(ours.out.weight)
    return ref


@pytest.mark.parametrize("d_model,n_heads,T", [(512, 8, 16), (64, 4, 7), (30, 5, 3), (16, 1, 9)])
def test_mha_matches_torch_multihead_attention(d_model, n_heads, T):
    torch.manual_seed(d_model + n_heads)
    ours = MultiHeadAttention(d_model, n_heads).eval()
    ref = _copy_into_torch_mha(ours, d_model, n_heads).eval()
    x = torch.randn(2, T, d_model)
    y, w = ours(x, return_weights=True)
    y_ref, w_ref = ref(x, x, x, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w, w_ref, rtol=1e-5, atol=1e-6)
    # causal: torch's attn_mask is True where attention is *not* allowed
    y_c = ours(x, is_causal=True)
    y_ref_c, _ = ref(x, x, x, attn_mask=~causal_mask(T), need_weights=False)
    torch.testing.assert_close(y_c, y_ref_c, rtol=1e-5, atol=1e-5)


def test_mha_padding_mask_broadcasts_over_heads():
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, 4).eval()
    x = torch.randn(2, 6, 32)
    mask = padding_mask([4, 6], 6)
    ref = _copy_into_torch_mha(mha, 32, 4).eval()
    y_ref, _ = ref(x, x, x, key_padding_mask=~mask[:, 0, 0, :])
    torch.testing.assert_close(mha(x, attn_mask=mask), y_ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("d_model,n_heads,n_kv,match", [
    (30, 4, None, "not divisible by n_heads"),
    (32, 0, None, "positive integer"),
    (32, 8, 3, "must divide n_heads"),
    (32, 4, 8, "must divide n_heads"),
    (32, 4, 0, "must divide n_heads"),
    (0, 1, None, "d_model must be a positive integer"),
    (-8, 4, None, "d_model must be a positive integer"),
    (32.0, 4, None, "d_model must be a positive integer"),
    (32, True, None, "n_heads must be a positive integer"),
    (32, 4, True, "must divide n_heads"),
])
def test_mha_bad_heads(d_model, n_heads, n_kv, match):
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(d_model, n_heads, n_kv)


def test_mha_bad_input_shape():
    with pytest.raises(ValueError, match="d_model=16"):
        MultiHeadAttention(16, 2)(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="head dimension"):
        MultiHeadAttention(16, 4, 2)(torch.randn(2, 3, 16), attn_mask=torch.ones(2, 3, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="x must be a tensor"):
        MultiHeadAttention(16, 2)([[0.0] * 16])
    with pytest.raises(ValueError, match="is_causal must be True or False"):
        MultiHeadAttention(16, 2)(torch.randn(2, 3, 16), is_causal="yes")


@pytest.mark.parametrize("dropout", [1.0, -0.1, float("nan"), "0.1"])
def test_mha_bad_dropout(dropout):
    with pytest.raises(ValueError, match="dropout must be a number in \\[0, 1\\)"):
        MultiHeadAttention(16, 2, dropout=dropout)


@pytest.mark.parametrize("call,match", [
    (lambda: causal_mask(0), "T_q must be a positive integer"),
    (lambda: causal_mask(3, -1), "T_k must be a positive integer"),
    (lambda: causal_mask(2.0), "T_q must be a positive integer"),
    (lambda: causal_mask(2, 4, offset=1.5), "offset must be an integer"),
    (lambda: padding_mask([3, 6], 5), "every length must be in 1..T=5"),
    (lambda: padding_mask([0, 2], 3), "every length must be in 1..T=3"),
    (lambda: padding_mask([2.5], 3), "integer lengths"),
    (lambda: padding_mask([], 3), "non-empty list"),
    (lambda: padding_mask([[1, 2]], 3), "non-empty list"),
    (lambda: padding_mask([2], 0), "T must be a positive integer"),
])
def test_masks_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------- RoPE inside the attention layer
def _rope_reference(mha, x, positions):
    """The layer written out: project, rotate q and k (course_lib.positions), group heads, causal SDPA, W_o."""
    B, T, _ = x.shape
    H, Hkv, dh = mha.n_heads, mha.n_kv_heads, mha.d_head
    q, k, v = mha.qkv(x).split([H * dh, Hkv * dh, Hkv * dh], dim=-1)
    q = q.view(B, T, H, dh).transpose(1, 2)
    k = k.view(B, T, Hkv, dh).transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
    v = v.view(B, T, Hkv, dh).transpose(1, 2).repeat_interleave(H // Hkv, dim=1)
    q, k = apply_rope(q, k, positions, mha.rope_theta)
    y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return mha.out(y.transpose(1, 2).reshape(B, T, -1))


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_rope_attention_equals_rotate_then_sdpa(n_kv):
    torch.manual_seed(n_kv)
    mha = MultiHeadAttention(32, 4, n_kv, rope_theta=10000.0).eval()
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(mha(x, is_causal=True), _rope_reference(mha, x, torch.arange(7)))
        pos = torch.tensor([[0, 0, 0, 1, 2, 3, 4], [3, 4, 5, 6, 7, 8, 9]])  # per sequence
        torch.testing.assert_close(mha(x, is_causal=True, position_ids=pos), _rope_reference(mha, x, pos))


def test_rope_changes_the_output_and_none_is_plain_attention():
    torch.manual_seed(0)
    plain, rope = MultiHeadAttention(32, 4).eval(), MultiHeadAttention(32, 4, rope_theta=10000.0).eval()
    rope.load_state_dict(plain.state_dict())  # RoPE adds no parameters
    assert plain.rope_theta is None and set(plain.state_dict()) == set(rope.state_dict())
    x = torch.randn(1, 6, 32)
    with torch.no_grad():
        assert not torch.allclose(plain(x, is_causal=True), rope(x, is_causal=True), atol=1e-4)
        # position 0 rotates by nothing: the first token's output is the same with and without RoPE
        torch.testing.assert_close(plain(x[:, :1]), rope(x[:, :1]))


@pytest.mark.parametrize("n_kv", [4, 1])
def test_rope_cache_holds_rotated_keys_and_decoding_equals_the_full_pass(n_kv):
    torch.manual_seed(1)
    mha = MultiHeadAttention(32, 4, n_kv, rope_theta=10000.0).eval()
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        full = mha(x, is_causal=True)
        cache = KVCache(1)
        steps = [mha(x[:, :5], is_causal=True, cache=cache)]  # prefill 5 tokens
        steps += [mha(x[:, t:t + 1], is_causal=True, cache=cache) for t in range(5, 9)]  # then one at a time
        torch.testing.assert_close(torch.cat(steps, dim=1), full)
        # the cache stores k *after* rotation: the keys at positions 0..8
        _, k_raw, _ = mha.qkv(x).split([32, n_kv * 8, n_kv * 8], dim=-1)
        k_raw = k_raw.view(2, 9, n_kv, 8).transpose(1, 2)
        _, k_rot = apply_rope(k_raw, k_raw, torch.arange(9))
        torch.testing.assert_close(cache.keys[0], k_rot)
        assert not torch.allclose(cache.keys[0], k_raw)


def test_rope_survives_conversion_to_gqa():
    torch.manual_seed(2)
    mha = MultiHeadAttention(32, 4, rope_theta=500000.0).eval()
    gqa = convert_mha_to_gqa(mha, 2)
    assert gqa.rope_theta == 500000.0
    same = convert_mha_to_gqa(mha, 4)  # pooling groups of one head changes nothing
    x = torch.randn(1, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(same(x, is_causal=True), mha(x, is_causal=True))


@pytest.mark.parametrize("kwargs,match", [
    (dict(d_model=12, n_heads=4, rope_theta=10000.0), "head dimension d_model // n_heads must be even, got 12 // 4 = 3; "
                                                      "choose n_heads among \\[1, 2, 3, 6\\]"),
    (dict(d_model=16, n_heads=2, rope_theta=1.0), "rope_theta must be None \\(no RoPE\\) or a finite base > 1"),
    (dict(d_model=16, n_heads=2, rope_theta=True), "rope_theta must be None"),
    (dict(d_model=16, n_heads=2, rope_theta="10000"), "rope_theta must be None"),
])
def test_rope_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiHeadAttention(**kwargs)


def test_position_ids_without_rope_name_the_fix():
    with pytest.raises(ValueError, match="position_ids are used by RoPE only.*rope_theta=10000.0"):
        MultiHeadAttention(16, 2)(torch.randn(1, 3, 16), position_ids=torch.arange(3))
    with pytest.raises(ValueError, match="positions must be >= 0"):
        MultiHeadAttention(16, 2, rope_theta=10000.0)(torch.randn(1, 3, 16), position_ids=torch.tensor([-1, 0, 1]))
