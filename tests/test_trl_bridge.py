"""The course in TRL's conventions (course_lib.trl_bridge, notebook 11): the rows TRL reads give the course's tokens,
the gold reward as a TRL reward function, the course's GPT inside TRL's trainers (its own base model, a scalar-head
reward model), and errors that say what to fix."""
import tempfile

import datasets
import pytest
import torch
from transformers import AutoModelForSequenceClassification
from trl import GRPOConfig, GRPOTrainer, RewardConfig, SFTConfig, SFTTrainer

from course_lib import chat, checkpoints, data, sft
from course_lib import reward_model as R
from course_lib import trl_bridge as B
from course_lib import world as W
from course_lib.model import GPT, GPTForSequenceClassification
from tiny import tiny_gpt

TOK = checkpoints.tokenizer()
DEMOS = list(data.load("sft"))[:200]


@pytest.fixture(scope="module")
def gpt_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("course_gpt")
    tiny_gpt(TOK).save_pretrained(str(folder))
    TOK.save_pretrained(str(folder))
    return folder


def test_rows_in_trls_columns():
    r = B.sft_rows(DEMOS[:1])[0]
    assert r == {"prompt": W.chat_prompt(DEMOS[0]["prompt"]), "completion": " " + DEMOS[0]["response"]}
    pair = {"prompt": "what is 3 plus 4 ?", "chosen": "3 plus 4 is 7 .", "rejected": "ugh , 8 ."}
    assert B.preference_rows([pair]) == [{"prompt": W.chat_prompt(pair["prompt"]), "chosen": " 3 plus 4 is 7 .",
                                          "rejected": " ugh , 8 ."}]
    assert B.prompt_rows(["hi"]) == [{"prompt": "<|user|> hi <|assistant|>"}]
    with pytest.raises(ValueError, match="'prompt' and 'response'"):
        B.sft_rows([{"prompt": "x"}])
    with pytest.raises(ValueError, match="'chosen' and 'rejected'"):
        B.preference_rows([{"prompt": "x", "chosen": "y"}])
    with pytest.raises(ValueError, match="list of strings"):
        B.prompt_rows("one prompt")


def test_prompt_plus_completion_plus_eos_is_the_course_exchange():
    """What TRL tokenises (prompt + completion, then the EOS id) is sft.sft_example's sequence, for every row."""
    for r, row in zip(DEMOS, B.sft_rows(DEMOS)):
        ids, labels = sft.sft_example(TOK, r["prompt"], r["response"])
        trl_ids = TOK(row["prompt"] + row["completion"])["input_ids"] + [TOK.eos_token_id]
        n_prompt = len(TOK(row["prompt"])["input_ids"])
        assert trl_ids == ids
        assert labels == [-100] * n_prompt + ids[n_prompt:]


def test_the_chat_template_writes_the_course_exchange():
    tok = checkpoints.load_tokenizer("base")
    tok.chat_template = B.CHAT_TEMPLATE
    for r in DEMOS[:50]:
        assert tok.apply_chat_template(B.conversation(r["prompt"], r["response"]), tokenize=False) == \
            W.chat_text(r["prompt"], r["response"])
        assert tok.apply_chat_template(B.conversation(r["prompt"]), tokenize=False, add_generation_prompt=True) == \
            W.chat_prompt(r["prompt"])
    with pytest.raises(Exception, match="user and assistant turns only"):
        tok.apply_chat_template([{"role": "system", "content": "be nice"}], tokenize=False)


def test_gold_reward_func_is_the_gold_reward():
    prompts = ["what is 3 plus 4 ?", "what is 2 plus 2 ?"]
    completions = [" 3 plus 4 is 7 .", " ugh , whatever ."]
    got = B.gold_reward_func([W.chat_prompt(p) for p in prompts], completions, extra_column=[1, 2])
    assert got == [W.gold_reward(p, c.strip()).total for p, c in zip(prompts, completions)]
    assert got[0] > got[1]
    with pytest.raises(ValueError, match="chat template"):
        B.gold_reward_func(["what is 3 plus 4 ?"], ["7"])
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        B.gold_reward_func([W.chat_prompt(p) for p in prompts], ["7"])


def test_cpu_args_and_logged():
    args = B.cpu_args(SFTConfig, tempfile.mkdtemp(), max_steps=3, learning_rate=1e-3)
    assert args.use_cpu and not args.bf16 and not args.gradient_checkpointing and args.max_steps == 3
    assert args.learning_rate == 1e-3 and args.report_to in ("none", [], ["none"])

    class Fake:
        class state:
            log_history = [{"loss": 1.0}, {"loss": 0.5, "lr": 1}]
    assert B.logged(Fake, "loss") == [1.0, 0.5]
    with pytest.raises(ValueError, match="logged no 'reward'; it logged: loss, lr"):
        B.logged(Fake, "reward")


def test_stop_like_the_course_leaves_other_models_alone():
    a, b = tiny_gpt(TOK), tiny_gpt(TOK)
    B.stop_like_the_course(a, TOK)
    assert a.generation_config.eos_token_id == chat.stop_ids(TOK)
    assert b.generation_config.eos_token_id != a.generation_config.eos_token_id


def test_the_gpt_is_its_own_base_model_and_returns_its_last_hidden_state():
    m = tiny_gpt(TOK)
    ids = torch.tensor([TOK(W.chat_text("what is 3 plus 4 ?", "7 ."))["input_ids"]])
    out = m(ids, output_hidden_states=True)
    assert m.base_model is m
    torch.testing.assert_close(out.last_hidden_state, out.hidden_states[-1])
    torch.testing.assert_close(m.lm_head(out.last_hidden_state), out.logits)


def test_sequence_classification_loads_the_lm_folder_and_reads_the_last_real_token(gpt_folder):
    rm = AutoModelForSequenceClassification.from_pretrained(str(gpt_folder), num_labels=1).eval()
    lm = GPT.from_pretrained(str(gpt_folder))
    assert isinstance(rm, GPTForSequenceClassification)
    torch.testing.assert_close(rm.wte.weight, lm.wte.weight)  # the trunk is the LM's; only `score` is new
    texts = [W.chat_text("what is 3 plus 4 ?", "3 plus 4 is 7 ."), W.chat_text("hi", "hello .")]
    enc = [TOK(t)["input_ids"] for t in texts]
    n = max(map(len, enc))
    pad = TOK.pad_token_id
    right = torch.tensor([e + [pad] * (n - len(e)) for e in enc]), torch.tensor([[1] * len(e) + [0] * (n - len(e)) for e in enc])
    left = torch.tensor([[pad] * (n - len(e)) + e for e in enc]), torch.tensor([[0] * (n - len(e)) + [1] * len(e) for e in enc])
    with torch.no_grad():
        r_right, r_left = rm(right[0], attention_mask=right[1]).logits, rm(left[0], attention_mask=left[1]).logits
        alone = torch.cat([rm(torch.tensor([e])).logits for e in enc])
        h = lm(torch.tensor([enc[1]])).last_hidden_state[0, -1]
    assert r_right.shape == (2, 1)
    torch.testing.assert_close(r_right, alone)
    torch.testing.assert_close(r_left, alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone[1], rm.score(h))
    target = torch.tensor([1.0, -1.0])
    loss = rm(right[0], attention_mask=right[1], labels=target).loss
    torch.testing.assert_close(loss, ((r_right.squeeze(-1) - target) ** 2).mean())


def test_sft_trainer_on_the_course_gpt_computes_the_courses_loss(gpt_folder):
    """TRL's SFTTrainer (its fused LM head reads model.base_model(...).last_hidden_state) on the course's GPT: its loss
    on a batch equals the course's masked next-token loss of the same sequences."""
    model = GPT.from_pretrained(str(gpt_folder))
    ds = datasets.Dataset.from_list(B.sft_rows(DEMOS[:8]))
    args = B.cpu_args(SFTConfig, tempfile.mkdtemp(), max_steps=1, per_device_train_batch_size=8,
                      completion_only_loss=True, max_length=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=TOK)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, batch)
        ex = [sft.sft_example(TOK, r["prompt"], r["response"]) for r in DEMOS[:8]]
        n = max(len(i) for i, _ in ex)
        ids = torch.tensor([i + [TOK.pad_token_id] * (n - len(i)) for i, _ in ex])
        labels = torch.tensor([lab + [-100] * (n - len(lab)) for _, lab in ex])
        mask = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i, _ in ex])
        ours = model(ids, attention_mask=mask, labels=labels).loss
    torch.testing.assert_close(trl_loss, ours, atol=1e-5, rtol=1e-5)
    trainer.train()
    assert len(B.logged(trainer, "loss")) == 1


def test_quiet_trainers_print_nothing_and_still_log(gpt_folder, capsys):
    def train(quiet):
        args = B.cpu_args(SFTConfig, tempfile.mkdtemp(), max_steps=2, per_device_train_batch_size=4, max_length=None)
        trainer = SFTTrainer(model=GPT.from_pretrained(str(gpt_folder)), args=args,
                             train_dataset=datasets.Dataset.from_list(B.sft_rows(DEMOS[:8])), processing_class=TOK)
        capsys.readouterr()
        (B.quiet(trainer) if quiet else trainer).train()
        return capsys.readouterr().out, B.logged(trainer, "loss")
    loud, quiet = train(False), train(True)
    assert "'loss'" in loud[0] and quiet[0] == "" and len(quiet[1]) == 2


def test_reward_trainer_loss_is_bradley_terry(gpt_folder):
    from trl import RewardTrainer
    rm = AutoModelForSequenceClassification.from_pretrained(str(gpt_folder), num_labels=1)
    rm.config.pad_token_id = TOK.pad_token_id
    pairs = [{"prompt": r["prompt"], "chosen": r["response"], "rejected": "ugh , whatever ."} for r in DEMOS[:6]]
    trainer = RewardTrainer(model=rm, args=B.cpu_args(RewardConfig, tempfile.mkdtemp(), max_steps=1, max_length=None),
                            train_dataset=datasets.Dataset.from_list(B.preference_rows(pairs)), processing_class=TOK)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    with torch.no_grad():
        r = rm(batch["input_ids"], attention_mask=batch["attention_mask"]).logits.squeeze(-1)
        torch.testing.assert_close(trainer.compute_loss(rm, batch), R.bradley_terry_loss(r[:6], r[6:]))


def test_grpo_trainer_runs_on_a_course_gpt_folder_with_the_gold_reward(gpt_folder):
    """GRPOTrainer loads its reference from the policy's folder (through config.auto_map, which the course's config
    answers with 'no remote code') and calls gold_reward_func on decoded completions."""
    model = B.stop_like_the_course(GPT.from_pretrained(str(gpt_folder)), TOK)
    ds = datasets.Dataset.from_list(B.prompt_rows(["what is 3 plus 4 ?", "what is 2 plus 5 ?"] * 4))
    args = B.cpu_args(GRPOConfig, tempfile.mkdtemp(), max_steps=1, per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=8, beta=0.04, loss_type="grpo")
    trainer = GRPOTrainer(model=model, reward_funcs=B.gold_reward_func, args=args, train_dataset=ds, processing_class=TOK)
    trainer.train()
    assert trainer.ref_model is not None and len(B.logged(trainer, "reward")) == 1
