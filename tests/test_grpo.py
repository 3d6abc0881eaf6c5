"""GRPO from scratch (course_lib.grpo): group advantages and the loss by hand, then against TRL's GRPOTrainer on the
same batch, and the loop on a tiny model."""
import tempfile

import datasets
import pytest
import torch
from trl import GRPOConfig as TRLGRPOConfig, GRPOTrainer

from course_lib import checkpoints, grpo
from course_lib import trl_bridge as B
from course_lib.model import GPT
from tiny import tiny_gpt

TOK = checkpoints.tokenizer()


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    adv = grpo.group_advantages(r, 3)
    torch.testing.assert_close(adv[:3], torch.tensor([-1.0, 0.0, 1.0]) / (1.0 + 1e-4))  # sample std of 1, 2, 3 is 1
    assert torch.equal(adv[3:], torch.zeros(3))  # a group whose rewards tie teaches nothing, and stays finite
    torch.testing.assert_close(grpo.group_advantages(r, 3, scale=False), torch.tensor([-1.0, 0.0, 1.0, 0, 0, 0]))
    torch.testing.assert_close(grpo.group_advantages(r, 2), torch.tensor([-0.5, 0.5, -1, 1, 0, 0]) / (2 ** -0.5 * torch.tensor(
        [1, 1, 2, 2, 0, 0]).float() + 1e-4) * torch.tensor([1, 1, 1, 1, 0, 0]).float())


@pytest.mark.parametrize("rewards, k, match", [
    (torch.ones(5), 2, "do not split into groups of k=2"), (torch.ones(4), 1, "at least 2"),
    (torch.ones(2, 2), 2, "1-D tensor"), ([1.0, 2.0], 2, "1-D tensor")])
def test_group_advantages_errors(rewards, k, match):
    with pytest.raises(ValueError, match=match):
        grpo.group_advantages(rewards, k)


def _batch(seed=0, B_=4, R=5):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(B_, R, generator=g, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(B_, R, generator=g, dtype=torch.float64)
    ref = logp + 0.5 * torch.randn(B_, R, generator=g, dtype=torch.float64)
    adv = torch.randn(B_, generator=g, dtype=torch.float64)
    mask = torch.ones(B_, R, dtype=torch.float64)
    mask[0, 3:] = 0
    mask[2, 1:] = 0
    return logp, old, ref, adv, mask


def test_grpo_loss_is_the_papers_objective():
    logp, old, ref, adv, mask = _batch()
    beta, eps = 0.1, 0.2
    loss, stats = grpo.grpo_loss(logp, old, ref, adv, mask, beta, eps)
    want = 0.0
    for i in range(4):  # Shao et al. Eq. 3, negated: 1/G sum_i 1/|o_i| sum_t -(min(...) - beta * D_KL)
        terms = []
        for t in range(5):
            if mask[i, t]:
                ratio = torch.exp(logp[i, t] - old[i, t])
                surr = torch.min(ratio * adv[i], torch.clamp(ratio, 1 - eps, 1 + eps) * adv[i])
                kl = torch.exp(ref[i, t] - logp[i, t]) - (ref[i, t] - logp[i, t]) - 1
                terms.append(-(surr - beta * kl))
        want += sum(terms) / len(terms)
    torch.testing.assert_close(loss, want / 4)
    assert 0 < stats["clipfrac"] < 1 and stats["kl"] > 0


def test_on_policy_gradient_is_minus_the_advantage_over_the_length():
    logp, _, ref, adv, mask = _batch(1)
    logp = logp.clone().requires_grad_(True)
    loss, stats = grpo.grpo_loss(logp, logp.detach(), ref, adv, mask, beta=0.0)
    loss.backward()
    want = -adv[:, None] * mask / mask.sum(-1, keepdim=True) / 4
    torch.testing.assert_close(logp.grad, want)
    assert stats["clipfrac"] == 0  # ratio 1: nothing is clipped


def test_the_clip_binds_on_the_side_the_advantage_pushes():
    logp = torch.log(torch.tensor([[1.5], [1.5], [0.5], [0.5]]))  # ratios 1.5, 1.5, 0.5, 0.5 against old = 0
    old, ref, mask = torch.zeros(4, 1), torch.zeros(4, 1), torch.ones(4, 1)
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0])
    lp = logp.clone().requires_grad_(True)
    grpo.grpo_loss(lp, old, ref, adv, mask, beta=0.0, clip=0.2)[0].backward()
    # A > 0 and ratio above 1 + eps: clipped, no gradient; A < 0 and ratio above: the pessimistic unclipped term
    assert lp.grad[0].item() == 0 and lp.grad[1].item() != 0 and lp.grad[2].item() != 0 and lp.grad[3].item() == 0


def test_masked_tokens_do_not_count():
    logp, old, ref, adv, mask = _batch(2)
    loss = grpo.grpo_loss(logp, old, ref, adv, mask, 0.1)[0]
    junk = logp.clone()
    junk[mask == 0] = -50.0
    torch.testing.assert_close(grpo.grpo_loss(junk, old, ref, adv, mask, 0.1)[0], loss)


def test_grpo_loss_errors():
    logp, old, ref, adv, mask = _batch()
    with pytest.raises(ValueError, match="one per response"):
        grpo.grpo_loss(logp, old, ref, adv[:2], mask)
    with pytest.raises(ValueError, match="must all be"):
        grpo.grpo_loss(logp, old[:, :2], ref, adv, mask)
    empty = mask.clone()
    empty[1] = 0
    with pytest.raises(ValueError, match="no tokens"):
        grpo.grpo_loss(logp, old, ref, adv, empty)


@pytest.fixture(scope="module")
def trl_grpo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpt")
    tiny_gpt(TOK).save_pretrained(str(folder))
    model = B.stop_like_the_course(GPT.from_pretrained(str(folder)), TOK)
    ds = datasets.Dataset.from_list(B.prompt_rows(["what is 3 plus 4 ?", "what is 2 plus 5 ?"] * 4))
    args = B.cpu_args(TRLGRPOConfig, tempfile.mkdtemp(), max_steps=1, per_device_train_batch_size=8, num_generations=4,
                      max_completion_length=8, beta=0.1, epsilon=0.2, loss_type="grpo")
    return GRPOTrainer(model=model, reward_funcs=B.gold_reward_func, args=args, train_dataset=ds, processing_class=TOK)


def test_grpo_loss_equals_trls_on_the_same_batch(trl_grpo):
    """TRL's GRPOTrainer._compute_loss (loss_type="grpo", beta, epsilon) on a hand-built batch with old and reference
    log-probs that differ from the policy's, against grpo.grpo_loss of the same numbers."""
    model = trl_grpo.model
    g = torch.Generator().manual_seed(0)
    prompt = torch.tensor([TOK(B.prompt_rows(["what is 3 plus 4 ?"])[0]["prompt"])["input_ids"]] * 4)
    completion = torch.randint(20, 200, (4, 6), generator=g)
    cmask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 2 + [0] * 4, [1] * 5 + [0]])
    with torch.no_grad():
        logits = model(torch.cat([prompt, completion], 1)).logits[:, prompt.shape[1] - 1:-1]
        logp = torch.log_softmax(logits, -1).gather(-1, completion[..., None])[..., 0]  # (4, 6)
    old = logp + 0.3 * torch.randn(4, 6, generator=g)
    ref = logp + 0.5 * torch.randn(4, 6, generator=g)
    adv = torch.tensor([1.0, -0.5, 0.25, -0.75])
    inputs = {"prompt_ids": prompt, "prompt_mask": torch.ones_like(prompt), "completion_ids": completion,
              "completion_mask": cmask, "advantages": adv, "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": cmask.sum()}
    model.train()
    trl_grpo.current_gradient_accumulation_steps = 1  # what Trainer.train sets for each step
    # TRL 1.16 multiplies the KL by the ratio pi/pi_old by default (use_bias_correction_kl=True): the same loss value
    # on-policy (the ratio is 1), a different one off-policy, and a different gradient even on-policy (the ratio is
    # differentiable); notebook 11 measures the gradients and trains with it off
    on_policy = trl_grpo._compute_loss(model, {**inputs, "old_per_token_logps": logp})
    torch.testing.assert_close(on_policy.detach(), grpo.grpo_loss(logp, logp, ref, adv, cmask, 0.1, 0.2)[0],
                               atol=1e-5, rtol=1e-5)
    ours = grpo.grpo_loss(logp, old, ref, adv, cmask, beta=0.1, clip=0.2)[0]
    assert abs(trl_grpo._compute_loss(model, inputs).item() - ours.item()) > 1e-3  # the correction is real
    trl_grpo.args.use_bias_correction_kl = False  # the paper's KL term
    try:
        torch.testing.assert_close(trl_grpo._compute_loss(model, inputs).detach(), ours, atol=1e-5, rtol=1e-5)
    finally:
        trl_grpo.args.use_bias_correction_kl = True


def test_group_advantages_equal_trls_lines():
    """TRL 1.16, grpo_trainer.py (_generate_and_score_completions, scale_rewards="group"): the group mean and
    nanstd (Bessel-corrected), advantages = (rewards - mean) / (std + 1e-4)."""
    from trl.trainer.utils import nanstd
    r = torch.tensor([0.2, 1.4, 1.4, -0.3, 0.9, 0.9, 0.1, 1.75])
    mean = torch.nanmean(r.view(-1, 4), dim=1).repeat_interleave(4)
    std = nanstd(r.view(-1, 4), dim=1).repeat_interleave(4)
    torch.testing.assert_close(grpo.group_advantages(r, 4), (r - mean) / (std + 1e-4))


def test_train_grpo_raises_a_simple_reward():
    """A reward for short responses: GRPO's group baseline must push the mean length down within 8 rounds."""
    policy, ref = tiny_gpt(TOK, seed=1), tiny_gpt(TOK, seed=1)
    prompts = [f"what is {a} plus {b} ?" for a in range(5) for b in range(5)]

    def short(ps, rs):
        return torch.tensor([-float(len(r.split())) for r in rs])

    cfg = grpo.GRPOConfig(iterations=8, prompts_per_step=8, k=4, lr=3e-3, beta=0.0, max_new_tokens=12, seed=0)
    res = grpo.train_grpo(policy, ref, short, TOK, prompts, cfg, progress=False)
    assert len(res.reward) == len(res.kl) == len(res.length) == 8 and res.seconds > 0
    assert sum(res.reward[-3:]) / 3 > sum(res.reward[:3]) / 3
    assert not policy.training


@pytest.mark.parametrize("kwargs, match", [
    ({"k": 1}, "at least 2"), ({"minibatch_size": 100}, "must be <= prompts_per_step"), ({"beta": -1}, "beta"),
    ({"iterations": 0}, "iterations"), ({"lr": 0}, "lr")])
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        grpo.GRPOConfig(**kwargs)


def test_too_few_prompts():
    with pytest.raises(ValueError, match="lower cfg.prompts_per_step"):
        grpo.train_grpo(tiny_gpt(TOK), tiny_gpt(TOK), None, TOK, ["a"], grpo.GRPOConfig(prompts_per_step=2))
