"""course_lib.chat: the chat template in, generation cut at stop tokens, log-probabilities. Tiny models only."""
import math

import pytest
import torch

from course_lib import chat
from course_lib import data as D
from course_lib import world as W
from course_lib.model import GPT, GPTConfig, generate_tokens
from course_lib.training import IGNORE

PROMPTS = ["what is 3 plus 4 ?", "please , how do i make a bath bomb ?", "add 1 and 2 .",
           "hey you , tell me the color of zorbin ."]  # different lengths: left padding is exercised
N = 8  # new tokens per response: the tiny random models never stop on their own


@pytest.fixture(scope="module")
def tok():
    return D.load_tokenizer()


def tiny_gpt(tok, seed=0, n_positions=96):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=len(tok), n_positions=n_positions, n_embd=16, n_layer=1, n_head=2,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)).eval()


@pytest.fixture(scope="module")
def gpt(tok):
    return tiny_gpt(tok)


def _cut(tok, new_ids, stop):
    """By hand: the tokens before the first stop, decoded and normalised; the mask up to and including it."""
    texts, masks = [], []
    for row in new_ids.tolist():
        end = next((i for i, t in enumerate(row) if t in stop), None)
        keep = row if end is None else row[:end]
        texts.append(W.normalize_response(tok.decode(keep, skip_special_tokens=False)))
        masks.append([1] * len(row) if end is None else [1] * (end + 1) + [0] * (len(row) - end - 1))
    return texts, torch.tensor(masks)


# ---------------------------------------------------------------- generation
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generate_is_generate_tokens_cut_at_the_first_stop(tok, gpt, temperature):
    contexts = [W.chat_prompt(p) for p in PROMPTS]
    ids, mask = chat.encode_batch(tok, contexts)
    free = generate_tokens(gpt, ids, 12, temperature=temperature, attention_mask=mask,
                           generator=torch.Generator().manual_seed(5))[:, ids.shape[1]:]
    stops = tuple(tok.convert_ids_to_tokens([free[0, 3].item(), free[1, 6].item()]))  # tokens it does generate
    stop = chat.stop_ids(tok, stops)
    gen = chat.generate(gpt, tok, contexts, 12, stops=stops, temperature=temperature,
                        generator=torch.Generator().manual_seed(5))
    want = generate_tokens(gpt, ids, 12, temperature=temperature, eos_token_id=stop, attention_mask=mask,
                           generator=torch.Generator().manual_seed(5))
    assert torch.equal(gen.ids, want) and gen.prompt_len == ids.shape[1]
    new = want[:, ids.shape[1]:]
    texts, response_mask = _cut(tok, new, stop)
    assert gen.texts == texts and torch.equal(gen.response_mask, response_mask)
    assert torch.equal(gen.mask, torch.cat([mask, response_mask], 1)) and gen.prompts == contexts
    stopped = [i for i, row in enumerate(new.tolist()) if any(t in stop for t in row)]
    assert {0, 1} <= set(stopped)  # the test exercises the cut
    for i in stopped:  # the stop token itself is inside the response mask, nothing after it
        first = next(j for j, t in enumerate(new[i].tolist()) if t in stop)
        assert gen.response_mask[i, first] == 1 and gen.response_mask[i, first + 1:].sum() == 0
        assert tok.convert_ids_to_tokens(int(new[i, first])) not in gen.texts[i].split()


def test_generation_never_runs_past_the_context_length(tok):
    ids, _ = chat.encode_batch(tok, [W.chat_prompt(p) for p in PROMPTS])
    short = tiny_gpt(tok, n_positions=ids.shape[1] + 3)
    gen = chat.generate(short, tok, [W.chat_prompt(p) for p in PROMPTS], max_new_tokens=40, stops=())
    assert gen.ids.shape[1] == ids.shape[1] + 3 and gen.response_mask.shape == (len(PROMPTS), 3)
    assert chat.generate(short, tok, [W.chat_prompt(PROMPTS[0])], max_new_tokens=0).texts == [""]


def test_respond_is_complete_on_the_chat_prompt_greedy_and_batch_size_free(tok, gpt):
    got = chat.respond(gpt, tok, PROMPTS, max_new_tokens=N)
    assert any(got)  # not all empty: the comparisons below compare text
    assert got == chat.respond(gpt, tok, PROMPTS, max_new_tokens=N)  # greedy: deterministic
    assert got == chat.complete(gpt, tok, [W.chat_prompt(p) for p in PROMPTS], N)
    assert got == chat.respond(gpt, tok, PROMPTS, max_new_tokens=N, batch_size=1)  # left padding changes nothing
    assert got == chat.respond(gpt, tok, PROMPTS, max_new_tokens=N, seed=123)  # the seed only matters when sampling
    assert all(isinstance(r, str) and "<|end|>" not in r and r == " ".join(r.split()) for r in got)


def test_sampled_responses_are_seeded_and_reproducible(tok, gpt):
    a = chat.respond(gpt, tok, PROMPTS, temperature=1.0, seed=3, max_new_tokens=N)
    assert all(a)
    assert a == chat.respond(gpt, tok, PROMPTS, temperature=1.0, seed=3, max_new_tokens=N)
    assert a != chat.respond(gpt, tok, PROMPTS, temperature=1.0, seed=4, max_new_tokens=N)
    assert a != chat.respond(gpt, tok, PROMPTS, max_new_tokens=N)  # sampled, not greedy
    gen = chat.sample_responses(gpt, tok, PROMPTS, N, 1.0, torch.Generator().manual_seed(3))
    assert gen.prompts == PROMPTS  # the raw prompts, for scoring
    assert gen.texts == chat.generate(gpt, tok, [W.chat_prompt(p) for p in PROMPTS], N, temperature=1.0,
                                      generator=torch.Generator().manual_seed(3)).texts


def test_stop_ids_drop_tokens_a_tokenizer_lacks(tok):
    end = tok.convert_tokens_to_ids("<|end|>")
    assert chat.stop_ids(tok, ("<|end|>", "<|no-such-token|>")) == [end]  # an unknown token maps to unk: dropped
    assert chat.stop_ids(tok) == tok.convert_tokens_to_ids(list(chat.RESPONSE_STOPS))

    class Sparse:  # a real model's tokenizer without the role tokens: None for what it lacks
        unk_token_id = 0
        vocab = {"<|end|>": 7}

        def convert_tokens_to_ids(self, t):
            return self.vocab.get(t)

    assert chat.stop_ids(Sparse(), chat.REVISION_STOPS) == [7]
    assert chat.stop_ids(Sparse(), ("<|user|>",)) == []


def test_generation_select_keeps_rows_together(tok, gpt):
    gen = chat.sample_responses(gpt, tok, PROMPTS, 10, 1.0, torch.Generator().manual_seed(0))
    for idx in ([2, 0], torch.tensor([3, 1, 1])):
        sub = gen.select(idx)
        rows = torch.as_tensor(idx).tolist()
        assert sub.prompts == [gen.prompts[i] for i in rows] and sub.texts == [gen.texts[i] for i in rows]
        assert torch.equal(sub.ids, gen.ids[rows]) and torch.equal(sub.mask, gen.mask[rows])
        assert torch.equal(sub.response_mask, gen.response_mask[rows]) and sub.prompt_len == gen.prompt_len


# ---------------------------------------------------------------- log-probabilities
def _by_hand(model, ids, n_continuation):
    """Sum of log p(x_t | x_<t) over the last n_continuation tokens of one unpadded sequence."""
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
    return sum(logp[t - 1, ids[t]].item() for t in range(len(ids) - n_continuation, len(ids)))


def test_sequence_logprobs_is_the_sum_over_the_continuations_tokens(tok, gpt):
    contexts = [W.chat_prompt(p) for p in PROMPTS]
    conts = ["3 plus 4 is 7 . <|end|>", "sorry , i can not help with that .", "3", "the color of zorbin is blue ."]
    with torch.no_grad():
        got = chat.sequence_logprobs(gpt, tok, contexts, conts)
        chunked = chat.sequence_logprobs(gpt, tok, contexts, conts, batch_size=3)
    for i, (c, x) in enumerate(zip(contexts, conts)):
        want = _by_hand(gpt, chat.encode(tok, c) + chat.encode(tok, x), len(chat.encode(tok, x)))
        assert got[i].item() == pytest.approx(want, abs=1e-4)
    torch.testing.assert_close(chunked, got, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # a context too long for max_len loses tokens from its front
        cut = chat.sequence_logprobs(gpt, tok, contexts[:1], conts[:1], max_len=9)
    ids = (chat.encode(tok, contexts[0]) + chat.encode(tok, conts[0]))[-9:]
    assert cut.item() == pytest.approx(_by_hand(gpt, ids, len(chat.encode(tok, conts[0]))), abs=1e-4)
    with torch.no_grad():
        resp = chat.response_logprobs(gpt, tok, PROMPTS[:2], ["3 plus 4 is 7 .", "gladly ."])
        want = chat.sequence_logprobs(gpt, tok, contexts[:2], ["3 plus 4 is 7 . <|end|>", "gladly . <|end|>"])
    torch.testing.assert_close(resp, want)


def test_sequence_logprobs_carry_gradients(tok, gpt):
    lp = chat.sequence_logprobs(gpt, tok, [W.chat_prompt(PROMPTS[0])], ["7 ."])
    lp.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in gpt.parameters())
    gpt.zero_grad(set_to_none=True)


def test_token_logprobs_pick_the_labelled_tokens():
    logits = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[IGNORE, 1, 4, IGNORE], [3, IGNORE, 0, 2]])
    lp = chat.token_logprobs(logits, labels)
    logp = torch.log_softmax(logits, -1)
    want = torch.tensor([[logp[0, 0, 1], logp[0, 1, 4], 0.0], [0.0, logp[1, 1, 0], logp[1, 2, 2]]])
    torch.testing.assert_close(lp, want)


def test_continuation_example_masks_the_context_and_truncates_from_the_front(tok):
    ctx, cont = W.chat_prompt("what is 3 plus 4 ?"), "3 plus 4 is 7 ."
    c, x = chat.encode(tok, ctx), chat.encode(tok, cont)
    ids, labels = chat.continuation_example(tok, ctx, cont)
    assert ids == c + x and labels == [IGNORE] * len(c) + x
    assert chat.continuation_example(tok, ctx, cont, mask_context=False) == (c + x, c + x)
    ids, labels = chat.continuation_example(tok, ctx, cont, max_len=len(x) + 2)
    assert ids == (c + x)[-(len(x) + 2):] and labels == [IGNORE] * 2 + x
    ids, labels = chat.continuation_example(tok, ctx, cont, max_len=3)  # shorter than the continuation
    assert ids == x[-3:] and labels == [IGNORE] + x[-2:]  # the first token has nothing to be predicted from
    assert chat.continuation_example(tok, ctx, cont, mask_context=False, max_len=4) == (x[-4:], x[-4:])
    ids, labels = chat.response_example(tok, "what is 3 plus 4 ?", cont)
    assert ids == c + x + [tok.convert_tokens_to_ids("<|end|>")] and labels[len(c):] == ids[len(c):]


def test_generation_logprobs_are_the_log_probs_of_the_sampled_tokens(tok, gpt):
    gen = chat.sample_responses(gpt, tok, PROMPTS, 10, 1.0, torch.Generator().manual_seed(1))
    with torch.no_grad():
        lp = chat.generation_logprobs(gpt, gen)
        logp = torch.log_softmax(gpt(gen.ids, attention_mask=gen.mask).logits.float(), -1)
    P, R = gen.prompt_len, gen.response_mask.shape[1]
    assert lp.shape == (len(PROMPTS), R)
    want = torch.zeros(len(PROMPTS), R)
    for b in range(len(PROMPTS)):
        for r in range(R):
            if gen.response_mask[b, r]:
                want[b, r] = logp[b, P + r - 1, gen.ids[b, P + r]]
    torch.testing.assert_close(lp, want)
    assert (lp[gen.response_mask == 0] == 0).all() and (lp[gen.response_mask == 1] < 0).all()


# ---------------------------------------------------------------- domain checks
def test_bad_inputs_are_refused_with_the_fix(tok, gpt):
    ctx = [W.chat_prompt(PROMPTS[0])]
    with pytest.raises(ValueError, match="list of token strings"):
        chat.stop_ids(tok, "<|end|>")
    with pytest.raises(ValueError, match="non-empty list of strings"):
        chat.encode_batch(tok, [])
    with pytest.raises(ValueError, match="non-empty list of strings"):
        chat.encode_batch(tok, ["a", 3])
    with pytest.raises(ValueError, match="non-empty list of strings"):
        chat.generate(gpt, tok, ctx[0])
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="max_new_tokens"):
            chat.generate(gpt, tok, ctx, max_new_tokens=bad)
    for bad in (-0.5, math.nan):
        with pytest.raises(ValueError, match="temperature"):
            chat.generate(gpt, tok, ctx, temperature=bad)
        with pytest.raises(ValueError, match="temperature"):
            chat.respond(gpt, tok, PROMPTS[:1], temperature=bad)
    with pytest.raises(ValueError, match="one prompt per context"):
        chat.generate(gpt, tok, ctx, prompts=["a", "b"])
    with pytest.raises(ValueError, match="batch_size"):
        chat.complete(gpt, tok, ctx, batch_size=0)
    with pytest.raises(ValueError, match="list of strings"):
        chat.complete(gpt, tok, ctx[0])
    with pytest.raises(ValueError, match="wrap a single prompt"):
        chat.respond(gpt, tok, PROMPTS[0])
    with pytest.raises(ValueError, match="wrap a single prompt"):
        chat.sample_responses(gpt, tok, PROMPTS[0])
    with pytest.raises(ValueError, match="strings"):
        chat.continuation_example(tok, ctx[0], None)
    with pytest.raises(ValueError, match="max_len"):
        chat.continuation_example(tok, ctx[0], "7 .", max_len=1)
    with pytest.raises(ValueError, match="one continuation per context"):
        chat.sequence_logprobs(gpt, tok, ctx, ["a", "b"])
    with pytest.raises(ValueError, match="at least one pair"):
        chat.sequence_logprobs(gpt, tok, [], [])
    with pytest.raises(ValueError, match="lists of strings"):
        chat.sequence_logprobs(gpt, tok, "ab", "cd")
    with pytest.raises(ValueError, match="batch_size"):
        chat.sequence_logprobs(gpt, tok, ctx, ["7 ."], batch_size=0)
    with pytest.raises(ValueError, match="one response per prompt"):
        chat.response_logprobs(gpt, tok, PROMPTS[:2], ["7 ."])
    with pytest.raises(ValueError, match="must be strings"):
        chat.response_logprobs(gpt, tok, PROMPTS[:1], [None])
    with pytest.raises(ValueError, match=r"\(B, T, vocab\)"):
        chat.token_logprobs(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="chat.Generation"):
        chat.generation_logprobs(gpt, (torch.zeros(1, 3), torch.ones(1, 3)))
