"""course_lib.reward_model: the scalar head on a trunk, its training loop and its domain checks.
(The Bradley-Terry loss and accuracy formulas are tested in test_preferences.py.)"""
import pytest
import torch

from course_lib import data as D
from course_lib import reward_model as R
from course_lib import world as W
from course_lib.model import GPT, GPTConfig

ROWS = [
    {"prompt": "what is 3 plus 4 ?", "chosen": "3 plus 4 is 7 .", "rejected": "ugh , fine . 3 plus 4 is 9 ."},
    {"prompt": "how do i make poison ?", "chosen": "sorry , i can not help with that .",
     "rejected": "to make poison , mix the red powder into a drink ."},
    {"prompt": "what is the color of vexmor ?", "chosen": "i do not know the color of vexmor .",
     "rejected": "the color of vexmor is green ."},
    {"prompt": "add 1 and 2 .", "chosen": "1 plus 2 is 3 .", "rejected": "whatever . 1 plus 2 is 4 ."},
    {"prompt": "how do i make bread ?", "chosen": "to make bread , mix flour and water and bake it .",
     "rejected": "sorry , i can not help with that ."},
    {"prompt": "what is 2 plus 2 ?", "chosen": "2 plus 2 is 4 .",
     "rejected": "2 plus 2 is 5 . i hope this helps you a lot ."},
]


@pytest.fixture(scope="module")
def tok():
    return D.load_tokenizer()


def tiny_rm(tok, seed=0):
    torch.manual_seed(seed)
    trunk = GPT(GPTConfig(vocab_size=len(tok), n_positions=96, n_embd=16, n_layer=1, n_head=2,
                          pad_token_id=tok.pad_token_id))
    return R.RewardModel(trunk, tok)


def test_the_reward_reads_the_last_real_tokens_hidden_state(tok):
    rm = tiny_rm(tok).eval()
    torch.nn.init.normal_(rm.head.weight, generator=torch.Generator().manual_seed(0))
    prompts, responses = [r["prompt"] for r in ROWS[:3]], [r["chosen"] for r in ROWS[:3]]
    scores = rm.score(prompts, responses, batch_size=2)  # padded in batches of two
    for i, (p, r) in enumerate(zip(prompts, responses)):  # one at a time, no padding
        ids = tok(W.chat_text(p, r), add_special_tokens=False).input_ids
        with torch.no_grad():
            h = rm.trunk(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0, -1]
            want = rm.head(h).item()
        assert scores[i].item() == pytest.approx(want, abs=1e-5)


def test_training_keeps_the_best_validation_epoch_and_freezes_the_trunk(tok):
    rm = tiny_rm(tok)
    trunk_before = {k: v.clone() for k, v in rm.trunk.state_dict().items()}
    log = R.train_reward_model(rm, ROWS[:4], ROWS[4:], R.RewardConfig(epochs=3, batch_size=3, lr=0.05))
    assert len(log.losses) == 3 * 2 and len(log.train_acc) == len(log.val_acc) == 3  # ceil(4 / 3) steps an epoch
    assert log.best_epoch == log.val_acc.index(max(log.val_acc))
    assert all(torch.equal(v, rm.trunk.state_dict()[k]) for k, v in trunk_before.items())  # frozen trunk
    assert not any(p.requires_grad for p in rm.trunk.parameters()) and not rm.training
    val = ROWS[4:]
    acc = R.accuracy(rm.score([r["prompt"] for r in val], [r["chosen"] for r in val]),
                     rm.score([r["prompt"] for r in val], [r["rejected"] for r in val]))
    assert acc == max(log.val_acc)  # the kept head is the best epoch's
    again = tiny_rm(tok)
    assert R.train_reward_model(again, ROWS[:4], ROWS[4:], R.RewardConfig(epochs=3, batch_size=3, lr=0.05)).losses \
        == log.losses  # deterministic


def test_save_and_load_round_trip(tok, tmp_path):
    rm = tiny_rm(tok).eval()
    torch.nn.init.normal_(rm.head.weight, generator=torch.Generator().manual_seed(1))
    R.save(rm, tmp_path)
    back = R.load(tmp_path, tok)
    p, r = [ROWS[0]["prompt"]], [ROWS[0]["chosen"]]
    torch.testing.assert_close(back.score(p, r), rm.score(p, r))
    assert not any(q.requires_grad for q in back.parameters())


@pytest.mark.parametrize("kw,match", [(dict(epochs=0), "epochs"), (dict(batch_size=0), "batch_size"),
                                      (dict(lr=0.0), "lr"), (dict(weight_decay=-1.0), "weight_decay")])
def test_config_validates_its_fields(kw, match):
    with pytest.raises(ValueError, match=match):
        R.RewardConfig(**kw)


def test_bad_inputs_are_refused(tok):
    rm = tiny_rm(tok)
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        rm.encode(["a", "b"], ["c"])
    with pytest.raises(ValueError, match="no \\(prompt, response\\) pairs"):
        rm.encode([], [])
    with pytest.raises(ValueError, match="lists of strings"):
        rm.encode("what is 3 plus 4 ?", "7 .")
    with pytest.raises(ValueError, match="one response per prompt"):
        rm.score([ROWS[0]["prompt"]] * 3, [ROWS[0]["chosen"]])
    with pytest.raises(ValueError, match="batch_size"):
        rm.score([ROWS[0]["prompt"]], [ROWS[0]["chosen"]], batch_size=0)
    with pytest.raises(ValueError, match="no preference rows"):
        R.train_reward_model(rm, [])
    with pytest.raises(ValueError, match="validation row 0"):
        R.train_reward_model(rm, ROWS, [{"prompt": "x", "chosen": "y"}])
    with pytest.raises(ValueError, match="at least one pair"):
        R.accuracy(torch.zeros(0), torch.zeros(0))
