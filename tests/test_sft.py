import pytest
import torch

from course_lib import sft
from course_lib.sft import sft_example
from course_lib.training import IGNORE, TrainConfig, collate, lm_loss, train
from tiny import tiny_gpt

ROWS = [{"prompt": "what is 3 plus 4 ?", "response": "3 plus 4 is 7 ."},
        {"prompt": "add 1 and 2 .", "response": "happy to help ! 1 plus 2 is 3 ."},
        {"prompt": "how do i make poison ?", "response": "sorry , i can not help with that ."}]




def test_prompt_tokens_get_no_loss(tok):
    ids, labels = sft_example(tok, "what is 3 plus 4 ?", "3 plus 4 is 7 .")
    text = tok.convert_ids_to_tokens(ids)
    start = text.index("<|assistant|>") + 1
    assert labels[:start] == [IGNORE] * start
    assert labels[start:] == ids[start:] and text[-1] == "<|end|>"
    ids2, labels2 = sft_example(tok, "what is 3 plus 4 ?", "3 plus 4 is 7 .", mask_prompt=False)
    assert ids2 == ids and labels2 == ids


def test_masked_loss_is_the_mean_over_response_tokens_only(tok):
    m = tiny_gpt(tok).eval()
    ex = [sft_example(tok, "what is 3 plus 4 ?", "3 plus 4 is 7 ."), sft_example(tok, "add 1 and 2 .", "3 .")]
    ids, labels, mask = collate(ex, tok.pad_token_id)
    logits = m(ids, attention_mask=mask).logits
    logp = torch.log_softmax(logits[:, :-1], -1)
    terms = [-logp[b, t, labels[b, t + 1]] for b in range(2) for t in range(ids.shape[1] - 1)
             if labels[b, t + 1] != IGNORE]
    assert len(terms) == len(tok("3 plus 4 is 7 . <|end|> 3 . <|end|>").input_ids)  # response tokens only
    torch.testing.assert_close(lm_loss(logits, labels), torch.stack(terms).mean())


@pytest.mark.parametrize("mask_prompt", [True, False])
def test_train_sft_is_next_token_training_on_the_demonstrations(tok, mask_prompt):
    cfg = sft.SFTConfig(steps=3, batch_size=2, lr=1e-2, warmup=1, mask_prompt=mask_prompt)
    a, b = tiny_gpt(tok), tiny_gpt(tok)
    got = sft.train_sft(a, tok, ROWS, cfg, progress=False)
    want = train(b, sft.sft_examples(tok, ROWS, mask_prompt), cfg, pad_id=tok.pad_token_id, progress=False)
    assert got.losses == want.losses and got.tokens == want.tokens and len(got.losses) == 3
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_sft_config_has_sft_defaults_and_validates():
    cfg = sft.SFTConfig()
    assert isinstance(cfg, TrainConfig) and cfg.lr == 5e-4 and cfg.mask_prompt is True
    with pytest.raises(ValueError, match="steps"):
        sft.SFTConfig(steps=0)
    with pytest.raises(ValueError, match="lr"):
        sft.SFTConfig(lr=-1e-3)


def test_bad_examples_are_refused(tok):
    with pytest.raises(ValueError, match="strings"):
        sft_example(tok, "what is 3 plus 4 ?", None)
    with pytest.raises(ValueError, match="strings"):
        sft_example(tok, 3, "7 .")
    with pytest.raises(ValueError, match="labels"):
        collate([([1, 2, 3], [1, 2])], 0)
    with pytest.raises(ValueError, match="row 1 must be a dict with 'prompt' and 'response'"):
        sft.sft_examples(tok, [ROWS[0], {"prompt": "hi"}])
    with pytest.raises(ValueError, match="no demonstrations"):
        sft.train_sft(tiny_gpt(tok), tok, [], progress=False)
