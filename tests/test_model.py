import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

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
    from course_lib.bench import model_rows

    rows = model_rows(steps=1, repeats=1)
    assert [r["model"] for r in rows] == ["course GPT", "GPT2LMHeadModel"]
    assert abs(rows[0]["parameters"] - rows[1]["parameters"]) / rows[1]["parameters"] < 0.01
    assert all(r["tokens_per_s"] > 0 for r in rows)
