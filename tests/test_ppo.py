import math

import pytest
import torch

from course_lib import ppo


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
    with pytest.raises(ValueError):
        ppo.best_of_n_kl(0)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="batch, time"):
        ppo.gae(torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="mask"):
        ppo.gae(torch.zeros(2, 3), torch.zeros(2, 3), mask=torch.ones(2, 4))
