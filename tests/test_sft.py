import pytest
import torch

from course_lib import data as D
from course_lib.model import GPT, GPTConfig
from course_lib.sft import sft_example
from course_lib.training import IGNORE, collate, lm_loss


def test_prompt_tokens_get_no_loss():
    tok = D.load_tokenizer()
    ids, labels = sft_example(tok, "what is 3 plus 4 ?", "3 plus 4 is 7 .")
    text = tok.convert_ids_to_tokens(ids)
    start = text.index("<|assistant|>") + 1
    assert labels[:start] == [IGNORE] * start
    assert labels[start:] == ids[start:] and text[-1] == "<|end|>"
    ids2, labels2 = sft_example(tok, "what is 3 plus 4 ?", "3 plus 4 is 7 .", mask_prompt=False)
    assert ids2 == ids and labels2 == ids


def test_masked_loss_is_the_mean_over_response_tokens_only():
    tok = D.load_tokenizer()
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=len(tok), n_positions=96, n_embd=16, n_layer=1, n_head=2)).eval()
    ex = [sft_example(tok, "what is 3 plus 4 ?", "3 plus 4 is 7 ."), sft_example(tok, "add 1 and 2 .", "3 .")]
    ids, labels, mask = collate(ex, tok.pad_token_id)
    logits = m(ids, attention_mask=mask).logits
    logp = torch.log_softmax(logits[:, :-1], -1)
    terms = [-logp[b, t, labels[b, t + 1]] for b in range(2) for t in range(ids.shape[1] - 1)
             if labels[b, t + 1] != IGNORE]
    torch.testing.assert_close(lm_loss(logits, labels), torch.stack(terms).mean())


def test_bad_examples_are_refused():
    tok = D.load_tokenizer()
    with pytest.raises(ValueError, match="strings"):
        sft_example(tok, "what is 3 plus 4 ?", None)
    with pytest.raises(ValueError, match="labels"):
        collate([([1, 2, 3], [1, 2])], 0)


def test_sequence_logprobs_sum_the_response_tokens_only():
    from course_lib.training import sequence_logprobs, token_logprobs

    tok = D.load_tokenizer()
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=len(tok), n_positions=96, n_embd=16, n_layer=1, n_head=2)).eval()
    prompts, responses = ["what is 3 plus 4 ?", "add 1 and 2 ."], ["3 plus 4 is 7 .", "sorry , i can not help with that ."]
    with torch.no_grad():
        got = sequence_logprobs(m, tok, prompts, responses)
        for i, (p, r) in enumerate(zip(prompts, responses)):  # one at a time, no padding: the plain definition
            ids, labels = sft_example(tok, p, r)
            logp = torch.log_softmax(m(torch.tensor([ids])).logits[0, :-1], -1)
            start = labels.index(next(l for l in labels if l != IGNORE))
            want = sum(logp[t - 1, ids[t]] for t in range(start, len(ids)))
            torch.testing.assert_close(got[i], want, rtol=1e-5, atol=1e-5)
        ids, labels, mask = collate([sft_example(tok, prompts[0], responses[0])], tok.pad_token_id)
        assert (token_logprobs(m(ids).logits, labels)[0, :7] == 0).all()  # prompt positions contribute nothing
