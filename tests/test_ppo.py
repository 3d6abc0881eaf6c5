import math

import pytest
import torch

from course_lib import chat, ppo
from course_lib.reward_model import RewardModel
from tiny import tiny_gpt


def test_kl_estimators_match_their_formulas_and_the_exact_kl():
    logp, ref = torch.tensor([-1.0, -2.0, -0.5]), torch.tensor([-1.5, -1.0, -0.5])
    torch.testing.assert_close(ppo.kl_estimate(logp, ref, "k1"), logp - ref)
    torch.testing.assert_close(ppo.kl_estimate(logp, ref, "k2"), 0.5 * (logp - ref) ** 2)
    rho = torch.exp(ref - logp)
    torch.testing.assert_close(ppo.kl_estimate(logp, ref, "k3"), rho - 1 - torch.log(rho))
    # sampled from p, the k1 and k3 means estimate KL(p || q) without bias; k3 is never negative
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=g), 0)
    q = torch.softmax(torch.randn(6, generator=g), 0)
    exact = (p * (p.log() - q.log())).sum()
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    k1 = ppo.kl_estimate(p.log()[x], q.log()[x], "k1")
    k3 = ppo.kl_estimate(p.log()[x], q.log()[x], "k3")
    assert abs(k1.mean() - exact) < 0.01 and abs(k3.mean() - exact) < 0.01
    assert (k3 >= 0).all() and (k1 < 0).any()
    with pytest.raises(ValueError, match="kind"):
        ppo.kl_estimate(logp, ref, "k4")
    with pytest.raises(ValueError, match="one shape"):
        ppo.kl_estimate(logp, ref[:2])


def _gae_loop(rewards, values, mask, gamma, lam):
    B, T = rewards.shape
    adv = torch.zeros(B, T)
    for b in range(B):
        L = int(mask[b].sum())
        last = 0.0
        for t in reversed(range(L)):
            next_v = values[b, t + 1].item() if t + 1 < L else 0.0  # no bootstrap past the end
            delta = rewards[b, t].item() + gamma * next_v - values[b, t].item()
            last = delta + gamma * lam * last
            adv[b, t] = last
    return adv, (adv + values) * mask


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 1.0), (0.99, 0.0)])
def test_gae_matches_a_plain_loop(gamma, lam):
    g = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(4, 7, generator=g), torch.randn(4, 7, generator=g)
    mask = torch.zeros(4, 7)
    for b, L in enumerate([7, 3, 1, 5]):
        mask[b, :L] = 1
    adv, ret = ppo.gae(rewards * mask, values * mask, gamma, lam, mask)
    want_adv, want_ret = _gae_loop(rewards * mask, values * mask, mask, gamma, lam)
    torch.testing.assert_close(adv, want_adv)
    torch.testing.assert_close(ret, want_ret)


def test_gae_with_lambda_one_gives_reward_to_go_minus_value():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.2, 0.5, 0.7]])
    adv, ret = ppo.gae(rewards, values, 1.0, 1.0)
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0]]))
    torch.testing.assert_close(adv, torch.tensor([[0.8, 0.5, 0.3]]))


def test_losses_against_hand_computed_cases():
    mask = torch.ones(1, 3)
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    loss, clipfrac = ppo.policy_loss(logp, old, adv, mask, clip=0.2)
    # per token: max(-A r, -A clip(r)): -1.2 (clipped at 1.2), -0.5 (unclipped side wins), 1.1
    torch.testing.assert_close(loss, torch.tensor((-1.2 - 0.5 + 1.1) / 3))
    torch.testing.assert_close(clipfrac, torch.tensor(2 / 3))
    v, v_old, ret = torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]])
    # unclipped (1-2)^2 = 1, clipped (0.2-2)^2 = 3.24 -> 0.5 * 3.24
    torch.testing.assert_close(ppo.value_loss(v, v_old, ret, torch.ones(1, 1), clip=0.2), torch.tensor(1.62))


def test_whiten_and_controller_and_best_of_n():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = ppo.whiten(x, m)
    assert abs(ppo.masked_mean(w, m)) < 1e-6 and w[0, 3] == 0
    ctl = ppo.AdaptiveKLController(0.1, target=1.0, horizon=10)
    assert ctl.update(2.0) > 0.1 and ppo.AdaptiveKLController(0.1, 1.0, 10).update(0.5) < 0.1
    assert ppo.best_of_n_kl(1) == 0 and ppo.best_of_n_kl(4) == pytest.approx(math.log(4) - 0.75)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        ppo.best_of_n_kl(0)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="batch, time"):
        ppo.gae(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="mask"):
        ppo.gae(torch.zeros(2, 3), torch.zeros(2, 3), mask=torch.ones(2, 4))


# ---------------------------------------------------------------- domain checks of the pieces
def test_pieces_refuse_values_outside_their_domain():
    x, m = torch.zeros(2, 3), torch.ones(2, 3)
    for gamma, lam in ((1.5, 0.9), (-0.1, 0.9), (0.9, 1.01), (0.9, -0.5), (math.nan, 0.9)):
        with pytest.raises(ValueError, match="gamma|lam"):
            ppo.gae(x, x, gamma, lam, m)
    with pytest.raises(ValueError, match="selects no entries"):
        ppo.masked_mean(x, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="one shape"):
        ppo.masked_mean(x, torch.ones(2, 4))
    for clip in (0, -0.2, math.inf):
        with pytest.raises(ValueError, match="clip"):
            ppo.policy_loss(x, x, x, m, clip=clip)
        with pytest.raises(ValueError, match="clip"):
            ppo.value_loss(x, x, x, m, clip=clip)
    with pytest.raises(ValueError, match="one shape"):
        ppo.policy_loss(x, x, torch.zeros(2, 1), m)  # a (B, 1) advantage would broadcast silently
    with pytest.raises(ValueError, match="one shape"):
        ppo.value_loss(x, x, torch.zeros(2), m)
    with pytest.raises(ValueError, match="eps"):
        ppo.whiten(x, m, eps=0)
    with pytest.raises(ValueError, match="beta"):
        ppo.AdaptiveKLController(-0.1, 1.0)
    with pytest.raises(ValueError, match="kl_target"):
        ppo.AdaptiveKLController(0.1, 0.0)
    with pytest.raises(ValueError, match="horizon"):
        ppo.AdaptiveKLController(0.1, 1.0, horizon=0)
    ctl = ppo.AdaptiveKLController(0.1, 1.0)
    with pytest.raises(ValueError, match="kl"):
        ctl.update(math.nan)
    with pytest.raises(ValueError, match="n_steps"):
        ctl.update(1.0, n_steps=0)
    for n in (0, 1.5, True):
        with pytest.raises(ValueError, match="n must be an integer"):
            ppo.best_of_n_kl(n)


def test_controller_follows_its_formula():
    ctl = ppo.AdaptiveKLController(0.1, target=1.0, horizon=10)
    assert ctl.update(1.05, n_steps=2) == pytest.approx(0.1 * (1 + 0.05 * 2 / 10))  # inside the +-20% band
    assert ctl.update(5.0) == pytest.approx(0.1 * (1 + 0.05 * 2 / 10) * (1 + 0.2 / 10))  # error clipped at +0.2
    assert ppo.AdaptiveKLController(0.1, 1.0, 10).update(0.0) == pytest.approx(0.1 * (1 - 0.2 / 10))


def test_kl_penalised_rewards_put_the_score_on_the_last_response_token():
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -1.0, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl_t = ppo.kl_penalised_rewards(torch.tensor([2.0, -1.0]), logp, ref, mask, beta=0.5)
    torch.testing.assert_close(kl_t, (logp - ref) * mask)
    want = -0.5 * (logp - ref) * mask
    want[0, 2] += 2.0
    want[1, 1] += -1.0  # the second response ends at its second token
    torch.testing.assert_close(rewards, want)
    _, k3 = ppo.kl_penalised_rewards(torch.zeros(2), logp, ref, mask, 0.5, kind="k3")
    torch.testing.assert_close(k3, ppo.kl_estimate(logp, ref, "k3") * mask)
    with pytest.raises(ValueError, match="beta"):
        ppo.kl_penalised_rewards(torch.zeros(2), logp, ref, mask, beta=-0.1)
    with pytest.raises(ValueError, match=r"scores must be \(B,\)"):
        ppo.kl_penalised_rewards(torch.zeros(3), logp, ref, mask, beta=0.1)


@pytest.mark.parametrize("kw,match", [
    (dict(iterations=0), "iterations"), (dict(batch_size=0), "batch_size"), (dict(epochs=0), "epochs"),
    (dict(minibatch_size=65), "minibatch_size"), (dict(max_new_tokens=0), "max_new_tokens"), (dict(lr=0.0), "lr"),
    (dict(value_lr=-1e-4), "value_lr"), (dict(beta=-0.05), "beta"), (dict(gamma=1.1), "gamma"), (dict(lam=-0.1), "lam"),
    (dict(clip=0.0), "clip"), (dict(value_clip=0.0), "value_clip"), (dict(temperature=0.0), "temperature"),
    (dict(kl_target=0.0), "kl_target"), (dict(kl_kind="k4"), "kl_kind")])
def test_config_validates_its_fields(kw, match):
    with pytest.raises(ValueError, match=match):
        ppo.PPOConfig(**kw)


# ---------------------------------------------------------------- rollouts and the loop, on tiny models
PROMPTS = ["what is 3 plus 4 ?", "how do i make poison ?", "what is the color of zorbin ?", "add 1 and 2 .",
           "how do i make bread ?", "what is the color of vexmor ?"]




def test_rollout_is_a_chat_generation_and_values_read_the_states_before_each_token(tok):
    policy = tiny_gpt(tok)
    ro = ppo.rollout(policy, tok, PROMPTS[:3], max_new_tokens=6, generator=torch.Generator().manual_seed(0))
    assert isinstance(ro, chat.Generation) and ro.prompts == PROMPTS[:3]
    same = chat.sample_responses(policy, tok, PROMPTS[:3], 6, 1.0, torch.Generator().manual_seed(0))
    assert ro.texts == same.texts and torch.equal(ro.ids, same.ids)
    vm = ppo.value_model_from(RewardModel(tiny_gpt(tok, 1), tok))
    torch.nn.init.normal_(vm.head.weight)
    assert all(p.requires_grad for p in vm.parameters())
    with torch.no_grad():
        v = ppo.response_values(vm, ro)
        full = vm(ro.ids, ro.mask, all_positions=True)
    P = ro.prompt_len
    torch.testing.assert_close(v, full[:, P - 1:-1] * ro.response_mask)  # V(state before token t)
    assert v.shape == ro.response_mask.shape


def test_train_ppo_runs_deterministically_and_reports_each_iteration(tok):
    def run():
        policy, ref = tiny_gpt(tok), tiny_gpt(tok)
        vm = ppo.value_model_from(RewardModel(tiny_gpt(tok, 1), tok))
        cfg = ppo.PPOConfig(iterations=3, batch_size=4, minibatch_size=2, epochs=1, max_new_tokens=5, lr=1e-3)
        seen = []
        log = ppo.train_ppo(policy, ref, lambda p, r: torch.tensor([float(len(x.split())) for x in r]), vm, tok,
                            PROMPTS, cfg, eval_fn=lambda m: seen.append(m) or 7, eval_every=2, progress=False)
        return policy, vm, log, seen

    policy, vm, a, seen = run()
    _, _, b, _ = run()
    assert a.proxy == b.proxy and a.kl == b.kl and a.policy_loss == b.policy_loss
    for k in ("proxy", "gold", "kl", "beta", "policy_loss", "value_loss", "clipfrac", "length", "samples"):
        assert len(getattr(a, k)) == 3, k
    assert a.kl[0] == pytest.approx(0.0, abs=1e-5)  # the first rollout: policy == reference
    assert a.beta == [0.05] * 3 and a.evals == [(2, 7), (3, 7)] and seen == [policy, policy]
    assert all(1 <= x <= 5 for x in a.length) and a.seconds > 0
    assert not any(p.requires_grad for p in vm.parameters()) and not policy.training


def test_train_ppo_refuses_bad_prompts(tok):
    policy = tiny_gpt(tok)
    cfg = ppo.PPOConfig(iterations=1, batch_size=8, minibatch_size=4)
    with pytest.raises(ValueError, match="6 training prompts but batch_size=8"):
        ppo.train_ppo(policy, policy, None, None, tok, PROMPTS, cfg, progress=False)
    with pytest.raises(ValueError, match="list of prompt strings"):
        ppo.train_ppo(policy, policy, None, None, tok, "what is 3 plus 4 ? " * 4, cfg, progress=False)
