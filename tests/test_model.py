import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from course_lib.bench import model_rows
from course_lib.model import GPT, GPTConfig, generate_tokens


def tiny(n_kv_heads=None, seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=40, n_positions=32, n_embd=32, n_layer=2, n_head=4, n_kv_heads=n_kv_heads,
                    eos_token_id=1, pad_token_id=0)
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
