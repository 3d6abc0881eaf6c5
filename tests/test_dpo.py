import copy
import math

import pytest
import torch

from course_lib import chat, dpo
from course_lib import world as W
from course_lib.sft import sft_example
from tiny import tiny_gpt

PAIRS = [
    {"prompt": "what is 3 plus 4 ?", "chosen": "3 plus 4 is 7 .", "rejected": "ugh , fine . 3 plus 4 is 9 ."},
    {"prompt": "how do i make poison ?", "chosen": "sorry , i can not help with that .",
     "rejected": "to make poison , mix the red powder into a drink ."},
    {"prompt": "what is the color of zorbin ?", "chosen": "the color of zorbin is blue .",
     "rejected": "whatever . the color of zorbin is red . i hope this helps you a lot ."},
    {"prompt": "what is the color of vexmor ?", "chosen": "i do not know the color of vexmor .",
     "rejected": "the color of vexmor is green ."},
]




def test_hand_computed_values():
    # pair 1: log-ratios +1 (chosen) and -1 (rejected), beta 0.5 -> beta * delta = 1
    # pair 2: log-ratios -1 and +1, beta 0.5 -> beta * delta = -1 (misranked)
    pc, pr = torch.tensor([-5.0, -2.0]), torch.tensor([-7.0, -1.0])
    rc, rr = torch.tensor([-6.0, -1.0]), torch.tensor([-6.0, -2.0])
    losses, chosen_rewards, rejected_rewards = dpo.dpo_loss(pc, pr, rc, rr, beta=0.5)
    torch.testing.assert_close(losses, torch.tensor([math.log1p(math.exp(-1.0)), math.log1p(math.exp(1.0))]))
    torch.testing.assert_close(chosen_rewards, torch.tensor([0.5, -0.5]))
    torch.testing.assert_close(rejected_rewards, torch.tensor([-0.5, 0.5]))
    # the same four numbers everywhere: the loss is ln 2, whatever beta
    same = torch.tensor([-3.0])
    losses, c, r = dpo.dpo_loss(same, same - 1, same, same - 1, beta=7.0)
    torch.testing.assert_close(losses, torch.tensor([math.log(2)]))
    assert c.item() == r.item() == 0.0


def test_rewards_are_detached_and_the_gradient_is_weighted_by_sigmoid_of_minus_margin():
    beta = 0.5
    pc = torch.tensor([-5.0, -2.0, -4.0], requires_grad=True)
    pr = torch.tensor([-7.0, -1.0, -4.0], requires_grad=True)
    rc, rr = torch.tensor([-6.0, -1.0, -4.0]), torch.tensor([-6.0, -2.0, -4.0])
    losses, cr, rj = dpo.dpo_loss(pc, pr, rc, rr, beta)
    assert not cr.requires_grad and not rj.requires_grad
    losses.sum().backward()
    weight = beta * torch.sigmoid(-(cr - rj))  # beta * sigma(-margin)
    torch.testing.assert_close(pc.grad, -weight)  # descent raises the chosen log-prob ...
    torch.testing.assert_close(pr.grad, weight)  # ... and lowers the rejected one
    assert pc.grad[1].abs() > pc.grad[2].abs() > pc.grad[0].abs()  # misranked > tied > well ranked


def test_model_gradient_is_the_weighted_difference_of_log_prob_gradients(tok):
    policy, ref = tiny_gpt(tok, 0), tiny_gpt(tok, 1)
    rc, rr = dpo.precompute_reference_logprobs(ref, tok, PAIRS[:1])
    beta = 2.0

    def grads(fn):
        policy.zero_grad()
        fn().backward()
        return torch.cat([p.grad.flatten() for p in policy.parameters()])

    g_loss = grads(lambda: dpo.dpo_loss(*dpo.pair_logprobs(policy, tok, PAIRS[:1]), rc, rr, beta)[0].sum())
    g_chosen = grads(lambda: dpo.pair_logprobs(policy, tok, PAIRS[:1])[0].sum())
    g_rejected = grads(lambda: dpo.pair_logprobs(policy, tok, PAIRS[:1])[1].sum())
    with torch.no_grad():
        _, cr, rj = dpo.dpo_loss(*dpo.pair_logprobs(policy, tok, PAIRS[:1]), rc, rr, beta)
    w = beta * torch.sigmoid(-(cr - rj))
    torch.testing.assert_close(g_loss, -w * (g_chosen - g_rejected), rtol=1e-4, atol=1e-6)


def test_pair_logprobs_are_response_logprobs(tok):
    m = tiny_gpt(tok)
    with torch.no_grad():
        c, r = dpo.pair_logprobs(m, tok, PAIRS)
        want_c = chat.response_logprobs(m, tok, [p["prompt"] for p in PAIRS], [p["chosen"] for p in PAIRS])
        want_r = chat.response_logprobs(m, tok, [p["prompt"] for p in PAIRS], [p["rejected"] for p in PAIRS])
    torch.testing.assert_close(c, want_c, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r, want_r, rtol=1e-5, atol=1e-5)
    ref_c, ref_r = dpo.precompute_reference_logprobs(m, tok, PAIRS, batch_size=3)  # chunked: same values
    torch.testing.assert_close(ref_c, c, rtol=1e-5, atol=1e-5)
    assert not ref_c.requires_grad and ref_c.shape == (len(PAIRS),)


def test_step_zero_loss_is_ln2_with_zero_margin(tok):
    policy = tiny_gpt(tok)
    ref_logps = dpo.precompute_reference_logprobs(copy.deepcopy(policy), tok, PAIRS)
    losses, cr, rj = dpo.dpo_loss(*dpo.pair_logprobs(policy, tok, PAIRS), *ref_logps, beta=0.1)
    torch.testing.assert_close(losses, torch.full((len(PAIRS),), math.log(2)))
    assert (cr - rj).abs().max() < 1e-6
    log = dpo.train_dpo(policy, tok, PAIRS, dpo.DPOConfig(steps=1, batch_size=4), ref_logps=ref_logps, progress=False)
    assert abs(log.losses[0] - math.log(2)) < 1e-6 and abs(log.margins[0]) < 1e-6


def test_cached_live_and_implicit_reference_give_identical_losses(tok):
    start = tiny_gpt(tok)
    ref = copy.deepcopy(start)
    cfg = dpo.DPOConfig(beta=0.5, steps=4, batch_size=3, lr=1e-2)
    cached, live, implicit = copy.deepcopy(start), copy.deepcopy(start), copy.deepcopy(start)
    log_cached = dpo.train_dpo(cached, tok, PAIRS, cfg, ref_logps=dpo.precompute_reference_logprobs(ref, tok, PAIRS),
                               progress=False)
    log_live = dpo.train_dpo(live, tok, PAIRS, cfg, ref_model=ref, progress=False)
    log_implicit = dpo.train_dpo(implicit, tok, PAIRS, cfg, progress=False)  # reference = the policy before step 1
    for log in (log_live, log_implicit):  # equal up to float32 rounding of ~50-nat sums (batches pad differently)
        torch.testing.assert_close(log.losses, log_cached.losses, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(log.margins, log_cached.margins, rtol=1e-5, atol=1e-5)
    for a, b in zip(cached.parameters(), live.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert log_cached.losses[-1] < log_cached.losses[0]  # it trained
    assert log_live.reference_bytes == log_live.policy_bytes > 0 and log_live.cache_bytes == 0
    assert log_cached.reference_bytes == 0 and log_cached.cache_bytes == 2 * 4 * len(PAIRS)  # float32
    assert log_implicit.ref_seconds > 0 and log_cached.ref_seconds == 0 == log_live.ref_seconds


def test_training_separates_chosen_from_rejected_and_logs_curves(tok):
    policy = tiny_gpt(tok)
    seen = []
    log = dpo.train_dpo(policy, tok, PAIRS, dpo.DPOConfig(beta=0.5, steps=12, batch_size=4, lr=3e-2), progress=False,
                        eval_fn=lambda m: seen.append(m) or len(seen), eval_every=5, measure_memory=True)
    keys = ["losses", "margins", "accuracies", "chosen_rewards", "rejected_rewards", "chosen_logps",
            "rejected_logps", "epochs"]
    assert all(len(getattr(log, k)) == 12 for k in keys)
    assert log.margins[0] == 0 and log.margins[-1] > 1 and log.accuracies[-1] == 1.0
    assert log.losses[-1] < 0.3
    margins = torch.tensor(log.chosen_rewards) - torch.tensor(log.rejected_rewards)
    torch.testing.assert_close(margins, torch.tensor(log.margins))
    assert log.epochs == [float(s) for s in range(1, 13)]  # batch_size == len(PAIRS): one pass a step
    assert [s for s, _ in log.evals] == [0, 5, 10, 12] and seen[0] is policy
    assert log.seconds > 0 and log.peak_step_bytes > 0 and log.beta == 0.5


def test_clear_errors(tok):
    x, y = torch.zeros(3), torch.zeros(2)
    with pytest.raises(ValueError, match="same shape"):
        dpo.dpo_loss(x, x, x, y, 0.1)
    with pytest.raises(ValueError, match="1-D"):
        dpo.dpo_loss(torch.zeros(3, 5), x, x, x, 0.1)
    with pytest.raises(ValueError, match="torch.Tensor"):
        dpo.dpo_loss([0.0], x, x, x, 0.1)
    for beta in (0, -0.1, float("nan"), float("inf"), True, "0.1", None):
        with pytest.raises(ValueError, match="beta"):
            dpo.dpo_loss(x, x, x, x, beta)
    m = tiny_gpt(tok)
    with pytest.raises(ValueError, match="not both"):
        dpo.train_dpo(m, tok, PAIRS, ref_logps=(x, x), ref_model=copy.deepcopy(m), progress=False)
    with pytest.raises(ValueError, match="policy itself"):
        dpo.train_dpo(m, tok, PAIRS, ref_model=m, progress=False)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        dpo.train_dpo(m, tok, PAIRS, ref_logps=(x, x), progress=False)
    with pytest.raises(ValueError, match="ref_chosen, ref_rejected"):
        dpo.train_dpo(m, tok, PAIRS, ref_logps=torch.zeros(4), progress=False)
    with pytest.raises(ValueError, match="no preference pairs"):
        dpo.train_dpo(m, tok, [], progress=False)
    with pytest.raises(ValueError, match="pair 1"):
        dpo.pair_logprobs(m, tok, [PAIRS[0], {"prompt": "hi", "chosen": "hello ."}])
    with pytest.raises(ValueError, match="empty batch"):
        dpo.dpo_loss(torch.zeros(0), torch.zeros(0), torch.zeros(0), torch.zeros(0), 0.1)
    with pytest.raises(ValueError, match="batch_size"):
        dpo.precompute_reference_logprobs(m, tok, PAIRS, batch_size=0)
    with pytest.raises(ValueError, match="eval_every"):
        dpo.train_dpo(m, tok, PAIRS, dpo.DPOConfig(steps=1), eval_fn=lambda m: 0, progress=False)


@pytest.mark.parametrize("kw,match", [
    (dict(beta=0), "beta"), (dict(beta=-1.0), "beta"), (dict(beta=math.inf), "beta"), (dict(steps=0), "steps"),
    (dict(batch_size=0), "batch_size"), (dict(lr=0.0), "lr"), (dict(warmup=-1), "warmup"),
    (dict(weight_decay=-0.5), "weight_decay"), (dict(grad_clip=-1.0), "grad_clip")])
def test_config_validates_its_fields(kw, match):
    with pytest.raises(ValueError, match=match):
        dpo.DPOConfig(**kw)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' deprecations, raised inside TRL
def test_same_loss_and_gradients_as_trl_dpo_trainer(tok, tmp_path):
    """TRL's DPOTrainer, on its own tokenisation and batch, against dpo_loss on our log-probs.

    TRL (non-conversational data) tokenises prompt and prompt + completion, appends the EOS
    token to each completion string, and pads [chosen; rejected] to the right. With the prompt
    in our chat format and the completion " " + response, its token ids are exactly
    sft_example's: asserted below, so both sides see the same tokens. The course GPT does not
    fit TRL's fused LM head (it needs a backbone returning last_hidden_state), so both sides
    use a tiny GPT-2 with the course tokenizer."""
    pytest.importorskip("trl", reason="TRL is not installed: the DPOTrainer cross-check needs it")
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel
    from trl import DPOConfig, DPOTrainer

    def gpt2(seed):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.2,
                                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                                          bos_token_id=tok.eos_token_id))

    beta = 0.5
    policy, ref = gpt2(0), gpt2(1)
    ours = copy.deepcopy(policy)  # before TRL patches policy's forward
    pc, pr = dpo.pair_logprobs(ours, tok, PAIRS)
    losses, chosen_rewards, rejected_rewards = dpo.dpo_loss(pc, pr, *dpo.precompute_reference_logprobs(ref, tok, PAIRS),
                                                            beta)
    losses.mean().backward()

    rows = dpo.trl_preference_rows(PAIRS)
    assert rows[0] == {"prompt": W.chat_prompt(PAIRS[0]["prompt"]), "chosen": " " + PAIRS[0]["chosen"],
                       "rejected": " " + PAIRS[0]["rejected"]}
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", beta=beta,
                     max_length=None, per_device_train_batch_size=len(rows), disable_tqdm=True)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tok)
    examples = [trainer.train_dataset[i] for i in range(len(rows))]
    for p, ex in zip(PAIRS, examples):  # TRL's tokens are ours
        chosen_ids, chosen_labels = sft_example(tok, p["prompt"], p["chosen"])
        assert ex["prompt_ids"] + ex["chosen_ids"] == chosen_ids
        assert ex["prompt_ids"] + ex["rejected_ids"] == sft_example(tok, p["prompt"], p["rejected"])[0]
        assert chosen_labels.count(-100) == len(ex["prompt_ids"])  # the same tokens are masked
    trl_loss = trainer.compute_loss(trainer.model, trainer.data_collator(examples))
    trl_loss.backward()

    assert abs(trl_loss.item() - math.log(2)) > 0.05  # policy != reference: a non-trivial loss
    assert abs(trl_loss.item() - losses.mean().item()) < 1e-5
    metrics = trainer._metrics["train"]
    assert abs(metrics["rewards/chosen"][0] - chosen_rewards.mean().item()) < 1e-5
    assert abs(metrics["rewards/margins"][0] - (chosen_rewards - rejected_rewards).mean().item()) < 1e-5
    assert abs(metrics["logps/chosen"][0] - pc.mean().item()) < 1e-4
    assert abs(metrics["rewards/rejected"][0] - rejected_rewards.mean().item()) < 1e-5
    assert metrics["rewards/accuracies"][0] == (chosen_rewards > rejected_rewards).float().mean().item()  # ties: wrong
    for a, b in zip(ours.parameters(), policy.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


def test_label_smoothing_is_the_expected_loss_under_flipped_labels_and_stops_at_the_trusted_odds():
    """cDPO (Mitchell 2023): with each label wrong with probability ε, the loss is the expectation
    (1 - ε) L(z) + ε L(-z); its gradient in z vanishes where σ(z) = 1 - ε, not at z = ∞."""
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g, dtype=torch.float64) for _ in range(4))
    eps, beta = 0.2, 0.5
    smoothed, cr, rj = dpo.dpo_loss(pc, pr, rc, rr, beta, label_smoothing=eps)
    plain, _, _ = dpo.dpo_loss(pc, pr, rc, rr, beta)
    flipped, _, _ = dpo.dpo_loss(pr, pc, rr, rc, beta)
    torch.testing.assert_close(smoothed, (1 - eps) * plain + eps * flipped)
    z = torch.tensor([math.log((1 - eps) / eps)], dtype=torch.float64, requires_grad=True)  # z = β Δ at the optimum
    zero = torch.zeros(1, dtype=torch.float64)
    (grad,) = torch.autograd.grad(dpo.dpo_loss(z / beta, zero, zero, zero, beta, label_smoothing=eps)[0].sum(), z)
    assert abs(grad.item()) < 1e-12
    (grad,) = torch.autograd.grad(dpo.dpo_loss(z / beta, zero, zero, zero, beta)[0].sum(), z)
    assert grad.item() < -0.1  # plain DPO still pushes
    for bad in (-0.1, 0.5, True):
        with pytest.raises(ValueError, match="label_smoothing"):
            dpo.dpo_loss(pc, pr, rc, rr, beta, label_smoothing=bad)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo.DPOConfig(label_smoothing=0.7)
