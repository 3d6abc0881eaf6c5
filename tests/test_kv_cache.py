"""MHA / GQA / MQA, the KV cache and MHA -> GQA conversion (notebook 02's library)."""
import pytest
import torch
import torch.nn.functional as F

from course_lib.attention import MultiHeadAttention, causal_mask, convert_mha_to_gqa
from course_lib.kv_cache import (MLA_CONFIGS, PUBLISHED_CONFIGS, KVCache, RollingKVCache, bytes_per_element,
                                 dequantize_kv, human_bytes, kv_cache_bytes, mla_cache_bytes, quantize_kv)
from course_lib.model import GPT, GPTConfig, generate_tokens

VARIANTS = [(8, 8), (8, 4), (8, 2), (8, 1), (4, 4), (4, 1), (1, 1)]  # (n_heads, n_kv_heads): MHA, GQA, MQA


def _reference(attn, x, is_causal=False, enable_gqa=False):
    """The same layer through torch's SDPA: K/V heads repeated for each query head of their group
    (or torch's own enable_gqa broadcasting)."""
    B, T, _ = x.shape
    H, Hkv, dh = attn.n_heads, attn.n_kv_heads, attn.d_head
    q, k, v = attn.qkv(x).split([H * dh, Hkv * dh, Hkv * dh], dim=-1)
    q = q.view(B, T, H, dh).transpose(1, 2)
    k, v = (t.view(B, T, Hkv, dh).transpose(1, 2) for t in (k, v))
    if enable_gqa:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=True)
    else:
        k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)
    return attn.out(y.transpose(1, 2).reshape(B, T, H * dh))


@pytest.mark.parametrize("n_heads,n_kv", VARIANTS)
@pytest.mark.parametrize("is_causal", [False, True])
def test_grouped_heads_match_torch_sdpa(n_heads, n_kv, is_causal):
    torch.manual_seed(n_heads * 10 + n_kv)
    attn = MultiHeadAttention(32, n_heads, n_kv).eval()
    x = torch.randn(3, 7, 32)
    with torch.no_grad():
        y = attn(x, is_causal=is_causal)
        torch.testing.assert_close(y, _reference(attn, x, is_causal), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(y, _reference(attn, x, is_causal, enable_gqa=True), rtol=1e-5, atol=1e-6)


def test_gqa_with_all_kv_heads_is_exactly_mha():
    """n_kv_heads == n_heads is MHA: same weights, same numbers as the default (n_kv_heads=None) layer."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(64, 8).eval()
    gqa = MultiHeadAttention(64, 8, n_kv_heads=8).eval()
    gqa.load_state_dict(mha.state_dict())
    assert gqa.qkv.weight.shape == (3 * 64, 64) and gqa.group == 1
    x = torch.randn(2, 9, 64)
    with torch.no_grad():
        assert torch.equal(gqa(x, is_causal=True), mha(x, is_causal=True))


def test_gqa_equals_mha_with_kv_heads_repeated():
    """A GQA layer is an MHA layer whose K/V projections are tied within each group."""
    torch.manual_seed(1)
    H, Hkv, d = 8, 2, 32
    dh = d // H
    gqa = MultiHeadAttention(d, H, Hkv).eval()
    mha = MultiHeadAttention(d, H).eval()
    q, k, v = gqa.qkv.weight.split([H * dh, Hkv * dh, Hkv * dh])
    rep = lambda w: w.view(Hkv, dh, d).repeat_interleave(H // Hkv, dim=0).reshape(H * dh, d)  # noqa: E731
    with torch.no_grad():
        mha.qkv.weight.copy_(torch.cat([q, rep(k), rep(v)]))
        mha.out.weight.copy_(gqa.out.weight)
        x = torch.randn(2, 6, d)
        torch.testing.assert_close(gqa(x, is_causal=True), mha(x, is_causal=True), rtol=1e-5, atol=1e-6)
    # the parameters GQA saves are exactly the repeated K/V rows
    saved = sum(p.numel() for p in mha.parameters()) - sum(p.numel() for p in gqa.parameters())
    assert saved == 2 * (H - Hkv) * dh * d


@pytest.mark.parametrize("n_heads,n_kv", [(4, 4), (4, 2), (4, 1)])
def test_attention_decoding_with_cache_equals_full_causal_forward(n_heads, n_kv):
    torch.manual_seed(2)
    layers = [MultiHeadAttention(16, n_heads, n_kv).eval() for _ in range(2)]
    x = torch.randn(2, 10, 16)
    with torch.no_grad():
        full = [layer(x, is_causal=True) for layer in layers]
        cache = KVCache(n_layers=2)
        # a prompt of 4 positions at once, then one position at a time
        steps = [x[:, :4]] + [x[:, t:t + 1] for t in range(4, 10)]
        pieces = [[layer(s, is_causal=True, cache=cache, layer=i) for s in steps] for i, layer in enumerate(layers)]
    for i in range(2):
        torch.testing.assert_close(torch.cat(pieces[i], dim=1), full[i], rtol=1e-5, atol=1e-6)
        assert cache.keys[i].shape == (2, n_kv, 10, 16 // n_heads)
    assert cache.get_seq_length() == 10


def _tiny_gpt(n_kv, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=20, n_positions=32, n_embd=32, n_layer=2, n_head=4, n_kv_heads=n_kv)
    return GPT(GPTConfig(**{**cfg, **kw})).eval()


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_model_token_by_token_with_cache_equals_full_forward(n_kv):
    model = _tiny_gpt(n_kv)
    ids = torch.randint(0, 20, (3, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        full = model(ids).logits
        cache = KVCache(model.config.n_layer)
        steps = [model(ids[:, :5], cache=cache, use_cache=True).logits]
        steps += [model(ids[:, t:t + 1], cache=cache, use_cache=True).logits for t in range(5, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    d_head = model.config.n_embd // model.config.n_head
    assert cache.nbytes() == kv_cache_bytes(2, n_kv, d_head, 12, batch=3, dtype=torch.float32)


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_generate_with_and_without_cache_give_the_same_tokens(n_kv):
    model = _tiny_gpt(n_kv, seed=4)
    prompt = torch.randint(0, 20, (2, 3), generator=torch.Generator().manual_seed(5))
    fast = generate_tokens(model, prompt, 20, use_cache=True)
    slow = generate_tokens(model, prompt, 20, use_cache=False)
    assert fast.shape == (2, 23) and torch.equal(fast, slow)


def test_kv_cache_bytes_formula():
    # 2 (K and V) * layers * KV heads * head dim * tokens * batch * bytes per element
    assert kv_cache_bytes(1, 1, 1, 1, 1, torch.float32) == 8
    assert kv_cache_bytes(2, 3, 5, 7, 11, torch.float16) == 2 * 2 * 3 * 5 * 7 * 11 * 2
    assert kv_cache_bytes(4, 2, 8, 16, dtype="bfloat16") == kv_cache_bytes(4, 2, 8, 16, dtype=torch.bfloat16)
    assert kv_cache_bytes(4, 2, 8, 16, dtype="int8") * 2 == kv_cache_bytes(4, 2, 8, 16, dtype=torch.float16)
    assert kv_cache_bytes(3, 4, 5, 0) == 0 and kv_cache_bytes(3, 4, 5, 9, batch=0) == 0  # an empty cache
    assert [bytes_per_element(t) for t in (torch.float64, torch.float32, torch.bfloat16, "int4")] == [8, 4, 2, 0.5]


def test_published_configs_per_token_and_savings():
    c = PUBLISHED_CONFIGS
    per_token = {name: kv_cache_bytes(m["n_layers"], m["n_kv_heads"], m["d_head"], 1) for name, m in c.items()}
    assert per_token["Llama-2-70B"] == 2 * 80 * 8 * 128 * 2 == 327_680  # 320 KiB per token in fp16
    assert per_token["Llama-3-8B"] == per_token["Mistral-7B"] == 131_072  # 128 KiB
    assert per_token["GPT-2 small"] == 36_864
    assert kv_cache_bytes(80, 8, 128, 4096) == 1_342_177_280  # 1.25 GiB at 4k context
    ratio = {name: m["n_heads"] // m["n_kv_heads"] for name, m in c.items()}
    assert ratio["Llama-2-70B"] == 8 and ratio["Llama-3-8B"] == ratio["Mistral-7B"] == 4  # not "8x" for every GQA
    assert all(m["n_heads"] % m["n_kv_heads"] == 0 for m in c.values())
    assert human_bytes(1_342_177_280) == "1.25 GiB" and human_bytes(36_864) == "36.00 KiB"


@pytest.mark.parametrize("n_kv,dtype", [(4, torch.float32), (2, torch.bfloat16), (1, torch.float16)])
def test_cache_nbytes_equals_formula_during_generation(n_kv, dtype):
    model = _tiny_gpt(n_kv, seed=6).to(dtype)
    cache = KVCache(model.config.n_layer)
    ids = torch.randint(0, 20, (2, 4), generator=torch.Generator().manual_seed(7))
    assert cache.nbytes() == 0
    with torch.no_grad():
        model(ids, cache=cache, use_cache=True)
        for t in range(5):
            assert cache.nbytes() == kv_cache_bytes(2, n_kv, 8, 4 + t, batch=2, dtype=dtype)
            model(ids[:, :1], cache=cache, use_cache=True)
    assert cache.keys[0].dtype == dtype


@pytest.mark.parametrize("call,match", [
    (lambda: kv_cache_bytes(-1, 1, 1, 1), "n_layers must be a positive integer"),
    (lambda: kv_cache_bytes(0, 1, 1, 1), "n_layers must be a positive integer"),
    (lambda: kv_cache_bytes(1, 2.0, 1, 1), "n_kv_heads must be a positive integer"),
    (lambda: kv_cache_bytes(1, 0, 1, 1), "n_kv_heads must be a positive integer"),
    (lambda: kv_cache_bytes(1, 1, 0, 1), "d_head must be a positive integer"),
    (lambda: kv_cache_bytes(1, 1, 1, True), "seq_len must be a non-negative integer"),
    (lambda: kv_cache_bytes(1, 1, 1, -1), "seq_len must be a non-negative integer"),
    (lambda: kv_cache_bytes(1, 1, 1, 1, batch=-2), "batch must be a non-negative integer"),
    (lambda: kv_cache_bytes(1, 1, 1, 1, dtype="float17"), "unknown dtype"),
    (lambda: KVCache(0), "n_layers must be a positive integer"),
    (lambda: KVCache(2).update(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4), 2), "out of range"),
    (lambda: KVCache(2).update(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4), -1), "out of range"),
    (lambda: KVCache(2).update(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 2, 4), 0), "must both be"),
    (lambda: KVCache(2).update(torch.zeros(1, 4), torch.zeros(1, 4), 0), "must both be"),
    (lambda: human_bytes(-1), "non-negative"),
    (lambda: human_bytes(float("nan")), "finite non-negative number"),
    (lambda: human_bytes("1024"), "finite non-negative number"),
    (lambda: human_bytes(torch.tensor(1024)), "convert a tensor with .item"),
    (lambda: KVCache(True), "n_layers must be a positive integer"),
    (lambda: KVCache(2).update(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4), True), "out of range"),
    (lambda: KVCache(2).update([0.0], [0.0], 0), "must be torch.Tensors"),
    (lambda: KVCache(2).update(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4).double(), 0), "share one dtype"),
    (lambda: KVCache(2).get_seq_length(2), "out of range"),
    (lambda: KVCache(2).get_seq_length(-1), "out of range"),
])
def test_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cache_refuses_a_different_batch_or_dtype():
    cache = KVCache(1)
    cache.update(torch.zeros(2, 2, 3, 4), torch.zeros(2, 2, 3, 4), 0)
    with pytest.raises(ValueError, match="fresh KVCache for a new batch"):
        cache.update(torch.zeros(3, 2, 1, 4), torch.zeros(3, 2, 1, 4), 0)
    with pytest.raises(ValueError, match="fresh KVCache after changing dtype"):
        cache.update(torch.zeros(2, 2, 1, 4).double(), torch.zeros(2, 2, 1, 4).double(), 0)


def test_model_refuses_more_tokens_than_positions():
    model = _tiny_gpt(2)
    with pytest.raises(ValueError, match="n_positions"):
        generate_tokens(model, torch.zeros(1, 30, dtype=torch.long), 5)


# --- MHA -> GQA conversion (Ainslie et al. 2023) ---

def _kv_weights(attn):
    H, Hkv, dh = attn.n_heads, attn.n_kv_heads, attn.d_head
    _, k, v = attn.qkv.weight.split([H * dh, Hkv * dh, Hkv * dh])
    return k.view(Hkv, dh, -1), v.view(Hkv, dh, -1)


@pytest.mark.parametrize("method", ["mean", "first"])
def test_conversion_pools_kv_heads_by_groups(method):
    torch.manual_seed(8)
    mha = MultiHeadAttention(32, 8, bias=True)
    gqa = convert_mha_to_gqa(mha, 2, method=method)
    assert (gqa.n_heads, gqa.n_kv_heads) == (8, 2) and gqa.qkv.bias is not None
    k, v = _kv_weights(mha)
    k2, v2 = _kv_weights(gqa)
    pick = (lambda t: t.view(2, 4, 4, 32).mean(1)) if method == "mean" else (lambda t: t.view(2, 4, 4, 32)[:, 0])
    torch.testing.assert_close(k2, pick(k))
    torch.testing.assert_close(v2, pick(v))
    assert torch.equal(gqa.qkv.weight[:32], mha.qkv.weight[:32]) and torch.equal(gqa.out.weight, mha.out.weight)
    assert mha.n_kv_heads == 8 and mha.qkv.weight.shape[0] == 96  # the original is untouched


def test_conversion_is_exact_when_heads_in_a_group_agree():
    """If the K/V heads of each group are already equal, mean-pooling and first-head lose nothing."""
    torch.manual_seed(9)
    gqa = MultiHeadAttention(32, 8, 2).eval()
    mha = MultiHeadAttention(32, 8).eval()
    q, k, v = gqa.qkv.weight.split([32, 8, 8])
    with torch.no_grad():
        mha.qkv.weight.copy_(torch.cat([q, k.view(2, 1, 4, 32).expand(2, 4, 4, 32).reshape(32, 32),
                                        v.view(2, 1, 4, 32).expand(2, 4, 4, 32).reshape(32, 32)]))
        mha.out.weight.copy_(gqa.out.weight)
    x = torch.randn(2, 5, 32)
    with torch.no_grad():
        for method in ("mean", "first"):
            torch.testing.assert_close(convert_mha_to_gqa(mha, 2, method)(x, is_causal=True), mha(x, is_causal=True))
        torch.testing.assert_close(convert_mha_to_gqa(mha, 8, "mean")(x), mha(x))  # n_kv == n_heads: identity


def test_conversion_random_is_seeded_and_keeps_scale():
    torch.manual_seed(10)
    mha = MultiHeadAttention(64, 8)
    a = convert_mha_to_gqa(mha, 1, "random", generator=torch.Generator().manual_seed(0))
    b = convert_mha_to_gqa(mha, 1, "random", generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.qkv.weight, b.qkv.weight)
    k, _ = _kv_weights(mha)
    k2, _ = _kv_weights(a)
    assert abs(k2.std().item() / k.std().item() - 1) < 0.2
    assert not torch.allclose(k2[0], k.view(1, 8, 8, 64).mean(1)[0])


def test_conversion_of_a_whole_gpt_then_decoding_with_cache():
    mha = _tiny_gpt(4, seed=11)
    gqa = convert_mha_to_gqa(mha, 2, "mean")
    assert gqa.config.n_kv_heads == 2 and mha.config.n_kv_heads == 4
    assert all(block.attn.n_kv_heads == 2 for block in gqa.h)
    assert all(block.attn.n_kv_heads == 4 for block in mha.h)
    assert torch.equal(gqa.wte.weight, mha.wte.weight)
    assert gqa.lm_head.weight.data_ptr() == gqa.wte.weight.data_ptr()  # still tied after the copy
    saved = sum(p.numel() for p in mha.parameters()) - sum(p.numel() for p in gqa.parameters())
    assert saved == mha.config.n_layer * 2 * (4 - 2) * 8 * 32
    prompt = torch.randint(0, 20, (2, 3), generator=torch.Generator().manual_seed(12))
    assert torch.equal(generate_tokens(gqa, prompt, 10), generate_tokens(gqa, prompt, 10, use_cache=False))
    # a fresh GPT built from the converted config accepts the converted weights
    fresh = GPT(gqa.config)
    fresh.load_state_dict(gqa.state_dict())


@pytest.mark.parametrize("args,match", [
    ((MultiHeadAttention(16, 4), 3), "must divide"),
    ((MultiHeadAttention(16, 4), 0), "must divide"),
    ((MultiHeadAttention(16, 4, 2), 4), "must divide the layer's 2"),
    ((MultiHeadAttention(16, 4), 2, "median"), "method must be one of"),
    ((torch.nn.Linear(4, 4), 1), "contains no course_lib MultiHeadAttention"),
])
def test_conversion_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        convert_mha_to_gqa(*args)
    with pytest.raises(ValueError, match="torch.Generator"):
        convert_mha_to_gqa(MultiHeadAttention(16, 4), 2, "random", generator=0)


def test_causal_mask_offset_matches_cached_queries():
    # the last T of T_k positions may see everything up to themselves
    assert torch.equal(causal_mask(3, 5, offset=2), torch.ones(5, 5, dtype=torch.bool).tril()[2:])



# --- sliding window (Jiang et al. 2023), MLA (DeepSeek-AI 2024), quantisation ---

def test_kv_cache_bytes_with_a_window_stops_growing_at_the_window():
    assert kv_cache_bytes(2, 3, 4, 10, window=16) == kv_cache_bytes(2, 3, 4, 10)  # shorter than the window
    assert kv_cache_bytes(2, 3, 4, 100, window=16) == 2 * 2 * 3 * 4 * 16 * 2 == kv_cache_bytes(2, 3, 4, 16)
    m = PUBLISHED_CONFIGS["Mistral-7B"]
    assert m["window"] == 4096
    full = kv_cache_bytes(m["n_layers"], m["n_kv_heads"], m["d_head"], 32768)
    rolling = kv_cache_bytes(m["n_layers"], m["n_kv_heads"], m["d_head"], 32768, window=m["window"])
    assert rolling == 2 * 32 * 8 * 128 * 4096 * 2 == 512 * 2**20 and full == 8 * rolling  # the paper's 8x at 32k


def test_kv_cache_bytes_quantised_with_scales_by_hand():
    # int8: 1 byte per element; one fp16 scale per 64 elements adds 2/64 bytes per element
    assert kv_cache_bytes(1, 1, 64, 1, dtype="int8", scale_group=64) == 2 * 64 + 2 * 2
    assert kv_cache_bytes(32, 8, 128, 4096, dtype="fp8", scale_group=128) == 2 * 32 * 8 * 128 * 4096 * (1 + 2 / 128)
    assert kv_cache_bytes(2, 2, 8, 5, dtype="int8", scale_group=4, scale_dtype=torch.float32) == 320 + 80 * 4
    assert kv_cache_bytes(2, 2, 8, 5, dtype="int4", scale_group=8) == 160 + 40 * 2  # 0.5 bytes + 2 per 8
    assert kv_cache_bytes(3, 2, 8, 7, dtype=torch.float8_e4m3fn) == kv_cache_bytes(3, 2, 8, 7, dtype="int8")
    assert kv_cache_bytes(2, 2, 8, 50, dtype="int8", scale_group=8, window=10) == \
        kv_cache_bytes(2, 2, 8, 10, dtype="int8", scale_group=8)


@pytest.mark.parametrize("dtype,group", [("int8", None), ("int8", 4), ("fp8", 8), ("fp8", 2)])
def test_quantised_cache_tensors_hold_the_formulas_bytes(dtype, group):
    model = _tiny_gpt(2, seed=13)
    cache = KVCache(model.config.n_layer)
    ids = torch.randint(0, 20, (3, 9), generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        model(ids, cache=cache, use_cache=True)
    held = 0
    for t in cache.keys + cache.values:
        codes, scales = quantize_kv(t, dtype, group)
        assert codes.element_size() == 1 and codes.shape == t.shape and scales.dtype == torch.float16
        held += codes.nbytes + scales.nbytes
        back = dequantize_kv(codes, scales)
        err = ((back - t).abs() / t.abs().amax(-1, keepdim=True)).max().item()
        assert err < (0.5 / 127 + 1e-3 if dtype == "int8" else 0.07)  # half a step / fp8 e4m3's 3 mantissa bits
    assert held == kv_cache_bytes(2, 2, 8, 9, batch=3, dtype=dtype, scale_group=group or 8)
    assert held <= cache.nbytes() / 2  # fp32 (4 bytes) -> 1 byte + at most 1 byte of scales (group 2)


def test_quantize_keeps_zeros_and_signs():
    t = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, -2.0, 0.5, 4.0]])
    codes, scales = quantize_kv(t, "int8", 2)
    assert scales[0].tolist() == [0.0, 0.0] and codes[0].tolist() == [0, 0, 0, 0]
    assert codes[1].tolist() == [64, -127, 16, 127]
    torch.testing.assert_close(dequantize_kv(codes, scales), t, atol=0.02, rtol=0.01)


def test_mla_cache_bytes_by_hand_and_deepseek_v2():
    assert mla_cache_bytes(1, 1, 0, 1, dtype=torch.float32) == 4
    assert mla_cache_bytes(2, 3, 5, 7, batch=11, dtype="bfloat16") == 2 * (3 + 5) * 7 * 11 * 2
    c = MLA_CONFIGS["DeepSeek-V2"]
    per_token = mla_cache_bytes(c["n_layers"], c["d_latent"], c["d_rope"], 1)
    assert per_token == 60 * (512 + 64) * 2 == 69_120
    # the paper: (d_c + d_h^R) l = 4.5 d_h l elements, the cache of GQA with 2.25 groups
    assert c["d_latent"] + c["d_rope"] == 4.5 * c["d_head"] == 2 * 2.25 * c["d_head"]
    as_mha = kv_cache_bytes(c["n_layers"], c["n_heads"], c["d_head"], 1)
    assert as_mha == 2 * 60 * 128 * 128 * 2 and as_mha / per_token == pytest.approx(56.9, abs=0.05)


def test_a_latent_cache_is_enough_to_decode():
    """MLA in miniature (no RoPE part): cache only c = x W_DKV (d_c per token); every head's keys and values
    are re-made from it by up-projections. Decoding from the latent cache equals attention over the full
    keys and values, and the latent cache holds mla_cache_bytes."""
    torch.manual_seed(15)
    B, T, d, H, dh, d_c = 2, 6, 16, 4, 4, 3
    W_dkv, W_q = torch.randn(d, d_c), torch.randn(d, H * dh)  # down-projection to the latent; queries
    W_uk, W_uv = torch.randn(d_c, H * dh), torch.randn(d_c, H * dh)  # up-projections: latent -> keys, values
    x = torch.randn(B, T, d)
    heads = lambda t: t.view(B, -1, H, dh).transpose(1, 2)  # noqa: E731
    c = x @ W_dkv  # (B, T, d_c)
    ref = F.scaled_dot_product_attention(heads(x @ W_q), heads(c @ W_uk), heads(c @ W_uv), is_causal=True)
    latent, outs = [], []
    for t in range(T):
        latent.append(x[:, t:t + 1] @ W_dkv)  # the only thing cached: (B, 1, d_c)
        C = torch.cat(latent, 1)
        outs.append(F.scaled_dot_product_attention(heads(x[:, t:t + 1] @ W_q), heads(C @ W_uk), heads(C @ W_uv)))
    torch.testing.assert_close(torch.cat(outs, 2), ref, rtol=1e-4, atol=1e-4)
    assert C.nbytes == mla_cache_bytes(1, d_c, 0, T, batch=B, dtype=torch.float32)
    assert C.nbytes * 2 * H * dh == kv_cache_bytes(1, H, dh, T, batch=B, dtype=torch.float32) * d_c


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_rolling_cache_is_sliding_window_attention(n_kv):
    """Token by token through a RollingKVCache of window W equals full attention with a band mask (each query
    sees itself and the W - 1 before it), and the cache holds kv_cache_bytes(..., window=W) at every step."""
    torch.manual_seed(16)
    W, T = 5, 13
    layers = [MultiHeadAttention(16, 4, n_kv).eval() for _ in range(2)]
    x = torch.randn(2, T, 16)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    band = (j <= i) & (i - j < W)
    cache, full_cache = RollingKVCache(2, window=W), KVCache(2)
    with torch.no_grad():
        ref = [layer(x, attn_mask=band) for layer in layers]
        outs = [[layer(x[:, :3], is_causal=True, cache=cache, layer=n)] for n, layer in enumerate(layers)]
        for t in range(3, T):
            for n, layer in enumerate(layers):
                outs[n].append(layer(x[:, t:t + 1], is_causal=True, cache=cache, layer=n))
            assert cache.nbytes() == kv_cache_bytes(2, n_kv, 4, t + 1, batch=2, dtype=torch.float32, window=W)
            assert cache.get_seq_length() == t + 1 and cache.n_held() == min(t + 1, W)
        unbounded = layers[0](x, is_causal=True, cache=full_cache)
    for n in range(2):
        torch.testing.assert_close(torch.cat(outs[n], 1), ref[n], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unbounded[:, W:], ref[0][:, W:])  # full attention differs once past the window


def test_rolling_cache_with_rope_keeps_positions():
    """With RoPE the layer takes the next position from get_seq_length(), which counts tokens seen, not held."""
    torch.manual_seed(17)
    W, T = 4, 10
    layer = MultiHeadAttention(16, 4, 2, rope_theta=10000.0).eval()
    x = torch.randn(1, T, 16)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    cache = RollingKVCache(1, window=W)
    with torch.no_grad():
        ref = layer(x, attn_mask=(j <= i) & (i - j < W))
        out = torch.cat([layer(x[:, t:t + 1], is_causal=True, cache=cache) for t in range(T)], 1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("call,match", [
    (lambda: kv_cache_bytes(1, 1, 1, 1, window=0), "window must be a positive integer"),
    (lambda: kv_cache_bytes(1, 1, 1, 1, window=2.5), "window must be a positive integer"),
    (lambda: kv_cache_bytes(1, 1, 8, 1, dtype="int8", scale_group=0), "scale_group must be a positive integer"),
    (lambda: kv_cache_bytes(1, 1, 8, 1, dtype="int8", scale_group=3), "must divide d_head=8"),
    (lambda: kv_cache_bytes(1, 1, 8, 1, dtype="float16", scale_group=8), "use dtype='int8', 'fp8' or 'int4'"),
    (lambda: kv_cache_bytes(1, 1, 8, 1, dtype="int8", scale_group=8, scale_dtype="half"), "unknown dtype"),
    (lambda: mla_cache_bytes(0, 512, 64, 1), "n_layers must be a positive integer"),
    (lambda: mla_cache_bytes(1, 0, 64, 1), "d_latent must be a positive integer"),
    (lambda: mla_cache_bytes(1, 512, -1, 1), "d_rope must be a non-negative integer"),
    (lambda: mla_cache_bytes(1, 512, 64, -1), "seq_len must be a non-negative integer"),
    (lambda: mla_cache_bytes(1, 512, 64, 1, batch=True), "batch must be a non-negative integer"),
    (lambda: quantize_kv(torch.zeros(2, 8), "int4"), "dtype must be one of"),
    (lambda: quantize_kv(torch.zeros(2, 8), "int8", 3), "must divide the head dimension 8"),
    (lambda: quantize_kv(torch.zeros(2, 8, dtype=torch.long)), "floating tensor"),
    (lambda: quantize_kv(torch.zeros(2, 8), scale_dtype=torch.int8), "scale_dtype must be a floating"),
    (lambda: dequantize_kv(torch.zeros(2, 8), torch.zeros(3, 2)), "the two tensors quantize_kv returned"),
    (lambda: RollingKVCache(2, window=0), "window must be a positive integer"),
    (lambda: RollingKVCache(0, window=4), "n_layers must be a positive integer"),
])
def test_new_bad_arguments_raise_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_rolling_cache_refuses_a_chunk_past_the_window():
    cache = RollingKVCache(1, window=4)
    cache.update(torch.zeros(1, 1, 3, 2), torch.zeros(1, 1, 3, 2), 0)
    with pytest.raises(ValueError, match="feed at most 1 now, then one token per call"):
        cache.update(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), 0)
    with pytest.raises(ValueError, match="fresh KVCache for a new batch"):
        cache.update(torch.zeros(2, 1, 1, 2), torch.zeros(2, 1, 1, 2), 0)
