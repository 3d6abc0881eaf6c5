import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from course_lib.bench import model_rows
from course_lib.kv_cache import KVCache
from course_lib.model import GPT, GPTConfig, generate_tokens

REFERENCE = Path(__file__).parent / "data" / "gpt_default_before_rope.json"


def tiny(n_kv_heads=None, seed=0, **kwargs):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=40, n_positions=32, n_embd=32, n_layer=2, n_head=4, n_kv_heads=n_kv_heads,
                    eos_token_id=1, pad_token_id=0, **kwargs)
    return GPT(cfg).eval()


def test_save_load_gives_identical_logits_through_automodel(tmp_path):
    m = tiny(2)
    m.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, GPT) and loaded.config.n_kv_heads == 2
    x = torch.randint(2, 40, (2, 9))
    assert torch.equal(loaded(x).logits, m(x).logits)
    assert loaded.lm_head.weight.data_ptr() == loaded.wte.weight.data_ptr()  # tied embeddings


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_cache_and_no_cache_give_identical_greedy_tokens(n_kv):
    m = tiny(n_kv)
    x = torch.randint(2, 40, (3, 6))
    a = generate_tokens(m, x, 12, use_cache=True)
    b = generate_tokens(m, x, 12, use_cache=False)
    assert torch.equal(a, b)
    c = m.generate(x, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(x), eos_token_id=None)
    assert torch.equal(a, c)  # transformers' generate() with its own cache agrees


def test_left_padding_gives_the_same_tokens_as_one_by_one():
    m = tiny()
    seqs = [torch.randint(2, 40, (n,)) for n in (3, 7, 5)]
    T = 7
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):], mask[i, T - len(s):] = s, 1
    batched = generate_tokens(m, ids, 8, attention_mask=mask)[:, T:]
    for i, s in enumerate(seqs):
        alone = generate_tokens(m, s[None], 8)[0, len(s):]
        assert torch.equal(batched[i], alone)


def test_labels_give_the_shifted_next_token_loss():
    m = tiny()
    x = torch.randint(2, 40, (2, 8))
    out = m(x, labels=x)
    ref = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 40), x[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, ref)


def test_too_long_input_gets_a_clear_error():
    with pytest.raises(ValueError, match="n_positions=32"):
        tiny()(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids must be a"):
        tiny()(torch.zeros(33, dtype=torch.long))


def test_generate_tokens_works_with_a_transformers_gpt2():
    torch.manual_seed(0)
    m = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=32, n_embd=32, n_layer=2, n_head=4)).eval()
    x = torch.randint(2, 40, (2, 5))
    assert torch.equal(generate_tokens(m, x, 6, use_cache=True), generate_tokens(m, x, 6, use_cache=False))


def test_model_benchmark_runs_and_compares_equal_sizes():
    rows = model_rows(steps=1, repeats=1)
    assert len(rows) == 2
    assert abs(rows[0]["parameters"] - rows[1]["parameters"]) / rows[1]["parameters"] < 0.01
    assert all(r["tokens_per_s"] > 0 for r in rows)


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=0), "steps must be a positive integer"),
    (dict(repeats=-1), "repeats must be a positive integer"),
    (dict(batch_size=2.5), "batch_size must be a positive integer"),
    (dict(steps=10**7), "use steps <= "),
])
def test_model_benchmark_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        model_rows(**kwargs)


def test_valid_configs_keep_their_defaults():
    cfg = GPTConfig(n_embd=32, n_head=4)
    assert (cfg.n_kv_heads, cfg.n_inner) == (4, 128)
    assert GPTConfig(n_embd=32, n_head=4, n_kv_heads=1, eos_token_id=[1, 2], pad_token_id=0).n_kv_heads == 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_embd=30, n_head=4), "n_head must divide n_embd \\(got n_embd=30, n_head=4\\): choose a divisor such as "
                                "1, 2, 3, 5, 6, 10, 15 or 30"),
    (dict(n_head=4, n_kv_heads=3), "n_kv_heads must divide n_head \\(got n_head=4, n_kv_heads=3\\): choose a divisor "
                                   "such as 1, 2 or 4"),
    (dict(n_head=4, n_kv_heads=8), "n_kv_heads must divide n_head"),
    (dict(vocab_size=0), "vocab_size must be a positive integer"),
    (dict(n_positions=-1), "n_positions must be a positive integer"),
    (dict(n_embd=0), "n_embd must be a positive integer"),
    (dict(n_layer=0), "n_layer must be a positive integer"),
    (dict(n_head=0), "n_head must be a positive integer"),
    (dict(n_kv_heads=0), "n_kv_heads must be a positive integer"),
    (dict(n_inner=0), "n_inner must be a positive integer"),
    (dict(n_embd=128.0), "n_embd must be a positive integer"),
    (dict(dropout=1.0), "dropout must be a number in \\[0, 1\\)"),
    (dict(dropout=-0.1), "dropout must be a number in \\[0, 1\\)"),
    (dict(layer_norm_epsilon=0.0), "layer_norm_epsilon must be a small positive number"),
    (dict(initializer_range=float("nan")), "initializer_range must be a non-negative number"),
    (dict(vocab_size=10, pad_token_id=10), "pad_token_id must be None or a token id in 0..vocab_size-1=9"),
    (dict(vocab_size=10, eos_token_id=[1, -1]), "eos_token_id must be None or a token id"),
    (dict(vocab_size=10, eos_token_id=[]), "eos_token_id must be None or a token id"),
    (dict(bos_token_id=[1, 2]), "bos_token_id must be None or a token id"),
])
def test_config_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kwargs)


def test_model_needs_its_config():
    with pytest.raises(ValueError, match="config must be a course_lib.model.GPTConfig"):
        GPT(GPT2Config())


@pytest.mark.parametrize("call,match", [
    (lambda m: m(torch.zeros(1, 3)), "input_ids must hold integer token ids"),
    (lambda m: m(torch.zeros(1, 0, dtype=torch.long)), "at least one sequence of at least one token"),
    (lambda m: m(torch.tensor([[1, 40]])), "token ids must be in 0..vocab_size-1=39"),
    (lambda m: m(torch.tensor([[1, -1]])), "token ids must be in 0..vocab_size-1=39"),
    (lambda m: m([[1, 2]]), "input_ids must be a \\(batch, T\\) tensor"),
    (lambda m: m(torch.ones(2, 5, dtype=torch.long), labels=torch.ones(2, 4, dtype=torch.long)),
     "labels must be a tensor of input_ids' shape"),
])
def test_forward_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny())


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_new_tokens=-1), "max_new_tokens must be a non-negative integer"),
    (dict(max_new_tokens=2.0), "max_new_tokens must be a non-negative integer"),
    (dict(max_new_tokens=True), "max_new_tokens must be a non-negative integer"),
    (dict(temperature=-0.5), "temperature must be a finite number >= 0"),
    (dict(temperature=float("inf")), "temperature must be a finite number >= 0"),
    (dict(temperature=float("nan")), "temperature must be a finite number >= 0"),
    (dict(input_ids=torch.ones(4, dtype=torch.long)), "input_ids must be a \\(batch, T\\) tensor"),
    (dict(input_ids=torch.ones(1, 0, dtype=torch.long)), "with T >= 1"),
    (dict(attention_mask=torch.ones(1, 2, dtype=torch.long)), "attention_mask must have input_ids' shape"),
    (dict(eos_token_id=[]), "eos_token_id must be None, a token id or a non-empty list"),
    (dict(eos_token_id="<|end|>"), "eos_token_id must be None, a token id or a non-empty list"),
    (dict(generator=0), "generator must be a torch.Generator"),
])
def test_generate_tokens_bad_arguments(kwargs, match):
    args = dict(input_ids=torch.ones(1, 3, dtype=torch.long), max_new_tokens=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generate_tokens(tiny(), **args)


def test_generate_tokens_zero_new_tokens_returns_the_prompt():
    x = torch.randint(2, 40, (2, 5))
    assert torch.equal(generate_tokens(tiny(), x, 0), x)


# ---------------------------------------------------------------- the default model has not moved
def _default_reference_run(n_kv_heads):
    """What tests/data/gpt_default_before_rope.json holds, recomputed with the current code."""
    m = tiny(n_kv_heads)
    x = torch.randint(2, 40, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(x)
    mask[0, :3] = 0  # left padding
    with torch.no_grad():
        return m, {"logits": m(x).logits, "logits_left_padded": m(x, attention_mask=mask).logits,
                   "greedy_tokens": generate_tokens(m, x, 6)}


@pytest.mark.parametrize("n_kv", [None, 2])
def test_default_config_is_unchanged_by_the_rope_option(n_kv):
    """Saved from the code before position_embedding existed: state dict and forward must be what they were."""
    ref = json.loads(REFERENCE.read_text())["runs"][f"kv{n_kv}"]
    m, out = _default_reference_run(n_kv)
    sd = m.state_dict()
    assert list(sd) == ref["state_dict_keys"]
    assert [list(t.shape) for t in sd.values()] == ref["state_dict_shapes"]
    assert [float(t.double().sum()) for t in sd.values()] == pytest.approx(ref["state_dict_sums"], rel=1e-12, abs=1e-12)
    for name in ("logits", "logits_left_padded"):
        torch.testing.assert_close(out[name], torch.tensor(ref[name]), rtol=1e-6, atol=1e-6)
    assert out["greedy_tokens"].tolist() == ref["greedy_tokens"]
    assert m.config.position_embedding == "learned" and m.wpe is not None
    assert all(b.attn.rope_theta is None for b in m.h)


def test_a_config_saved_before_the_option_loads_as_learned(tmp_path):
    m = tiny()
    m.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for key in ("position_embedding", "rope_theta"):
        cfg.pop(key)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert loaded.config.position_embedding == "learned"
    x = torch.randint(2, 40, (1, 6))
    assert torch.equal(loaded(x).logits, m(x).logits)


# ---------------------------------------------------------------- RoPE as a config option
def test_rope_model_has_no_position_table():
    learned, rope = tiny(), tiny(position_embedding="rope")
    assert rope.wpe is None and not any(k.startswith("wpe") for k in rope.state_dict())
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(learned) - n(rope) == 32 * 32  # n_positions x n_embd
    assert all(b.attn.rope_theta == 10000.0 for b in rope.h)
    assert tiny(position_embedding="rope", rope_theta=500000.0).h[0].attn.rope_theta == 500000.0


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_rope_cached_decoding_equals_the_full_forward(n_kv):
    m = tiny(n_kv, position_embedding="rope")
    x = torch.randint(2, 40, (2, 12), generator=torch.Generator().manual_seed(n_kv))
    with torch.no_grad():
        full = m(x).logits
        cache = KVCache(2)
        out = m(x[:, :5], cache=cache, use_cache=True)
        logits = [out.logits]
        for t in range(5, 12):
            out = m(x[:, t:t + 1], cache=out.cache, use_cache=True)
            logits.append(out.logits)
    torch.testing.assert_close(torch.cat(logits, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length() == 12


@pytest.mark.parametrize("n_kv", [4, 1])
def test_rope_generation_with_and_without_cache_and_through_generate(n_kv):
    m = tiny(n_kv, position_embedding="rope")
    x = torch.randint(2, 40, (3, 6), generator=torch.Generator().manual_seed(3))
    a = generate_tokens(m, x, 12, use_cache=True)
    assert torch.equal(a, generate_tokens(m, x, 12, use_cache=False))
    c = m.generate(x, max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(x), eos_token_id=None)
    assert torch.equal(a, c)


def test_rope_left_padding_gives_the_same_tokens_as_one_by_one():
    """Left padding shifts the real tokens right; position_ids from the mask keep their rotations right."""
    m = tiny(position_embedding="rope")
    g = torch.Generator().manual_seed(4)
    seqs = [torch.randint(2, 40, (n,), generator=g) for n in (3, 7, 5)]
    T = 7
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, T - len(s):], mask[i, T - len(s):] = s, 1
    for use_cache in (True, False):
        batched = generate_tokens(m, ids, 8, attention_mask=mask, use_cache=use_cache)[:, T:]
        for i, s in enumerate(seqs):
            assert torch.equal(batched[i], generate_tokens(m, s[None], 8)[0, len(s):])
    hf = m.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=None)[:, T:]
    assert torch.equal(hf, generate_tokens(m, ids, 8, attention_mask=mask)[:, T:])


def test_rope_scores_are_relative_so_shifting_every_position_changes_nothing():
    rope, learned = tiny(position_embedding="rope"), tiny()
    x = torch.randint(2, 40, (2, 8))
    shifted = torch.arange(8)[None] + 17
    with torch.no_grad():
        torch.testing.assert_close(rope(x, position_ids=shifted).logits, rope(x).logits, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(learned(x, position_ids=shifted).logits, learned(x).logits, atol=1e-3)


def test_rope_save_load_round_trip(tmp_path):
    m = tiny(2, position_embedding="rope", rope_theta=20000.0)
    m.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["position_embedding"] == "rope"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, GPT) and loaded.wpe is None
    assert (loaded.config.position_embedding, loaded.config.rope_theta, loaded.h[0].attn.rope_theta) == \
        ("rope", 20000.0, 20000.0)
    x = torch.randint(2, 40, (2, 9))
    assert torch.equal(loaded(x).logits, m(x).logits)
    assert torch.equal(generate_tokens(loaded, x, 5), generate_tokens(m, x, 5))


@pytest.mark.parametrize("kwargs,match", [
    (dict(position_embedding="alibi"), "position_embedding must be 'learned' .* or 'rope'"),
    (dict(position_embedding=None), "position_embedding must be 'learned'"),
    (dict(n_embd=12, n_head=4, position_embedding="rope"),
     "head dimension n_embd // n_head must be even, got 12 // 4 = 3: choose n_head among 1, 2, 3, 6"),
    (dict(position_embedding="rope", rope_theta=0.0), "rope_theta must be a finite number > 1"),
    (dict(rope_theta=float("nan")), "rope_theta must be a finite number > 1"),
])
def test_rope_config_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kwargs)
