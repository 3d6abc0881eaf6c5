"""Notebook 07's exercises: each check accepts other correct implementations and names plausible mistakes."""
import math

import torch

from exercise_harness import make_tests


# ------------------------------------------------------------------ correct, but not the notebook's code
def k3_ratio(logp, ref_logp):
    rho = torch.exp(ref_logp - logp)
    return rho - 1 - torch.log(rho)


def k3_expanded(logp, ref_logp):
    return torch.exp(ref_logp - logp) - 1 + (logp - ref_logp)


def klr_cat(score, logp, ref_logp, beta):
    kl = -beta * (logp - ref_logp)
    return torch.cat([kl[:, :-1], kl[:, -1:] + score[:, None]], dim=1)


def klr_onehot(score, logp, ref_logp, beta):
    last = torch.zeros_like(logp)
    last[:, -1] = 1
    return beta * (ref_logp - logp) + score[:, None] * last


def gae_reversed_lists(rewards, values, gamma, lam):
    B, T = rewards.shape
    adv = [None] * T
    running = torch.zeros(B, dtype=rewards.dtype)
    for t in range(T - 1, -1, -1):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros(B, dtype=values.dtype)
        running = rewards[:, t] + gamma * next_v - values[:, t] + gamma * lam * running
        adv[t] = running
    adv = torch.stack(adv, dim=1)
    return adv, adv + values


def gae_matrix(rewards, values, gamma, lam):
    # A = delta @ W with W[k, t] = (gamma * lam)^(k - t) for k >= t: the closed form of the recursion
    T = rewards.shape[1]
    nxt = torch.nn.functional.pad(values[:, 1:], (0, 1))
    delta = rewards + gamma * nxt - values
    k, t = torch.arange(T)[:, None], torch.arange(T)[None, :]
    W = torch.where(k >= t, torch.tensor(gamma * lam, dtype=torch.float64) ** (k - t).clamp_min(0), torch.tensor(0.0,
                    dtype=torch.float64)).to(delta.dtype)
    adv = delta @ W
    return adv, adv + values


def whiten_biased(a):
    return (a - a.mean()) / torch.sqrt(a.var(unbiased=False) + 1e-8)


def whiten_flat(a):
    flat = a.flatten()
    return ((flat - flat.mean()) / flat.std()).view_as(a)


def clip_loss_max(logp_new, logp_old, advantages, clip_eps):
    ratio = (logp_new - logp_old).exp()
    return torch.max(-advantages * ratio, -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)).mean()


def clip_loss_where(logp_new, logp_old, advantages, clip_eps):
    ratio = torch.exp(logp_new - logp_old)
    # with A > 0 the gain is capped at 1 + eps; with A < 0 at 1 - eps
    capped = torch.where(advantages >= 0, torch.minimum(ratio, torch.tensor(1 + clip_eps, dtype=ratio.dtype)),
                         torch.maximum(ratio, torch.tensor(1 - clip_eps, dtype=ratio.dtype)))
    return -(capped * advantages).sum() / advantages.numel()


CORRECT = {
    "07.kl_k3": [k3_ratio, k3_expanded],
    "07.kl_penalized_rewards": [klr_cat, klr_onehot],
    "07.gae": [gae_reversed_lists, gae_matrix],
    "07.whiten_advantages": [whiten_biased, whiten_flat],
    "07.ppo_clip_loss": [clip_loss_max, clip_loss_where],
    "07.predict_best_of_n_kl": [lambda: math.log(16) - 15 / 16, lambda: 1.835],
}


# ------------------------------------------------------------------ plausible mistakes
def _td_sum(rewards, values, gamma):
    nxt = torch.nn.functional.pad(values[:, 1:], (0, 1))
    delta = rewards + gamma * nxt - values
    return torch.flip(torch.cumsum(torch.flip(delta, [1]), 1), [1])


def gae_plain_td_sum(rewards, values, gamma, lam):
    adv = _td_sum(rewards, values, gamma)
    return adv, adv + values


def gae_bootstrap(rewards, values, gamma, lam):
    B, T = rewards.shape
    adv, running = torch.zeros_like(rewards), torch.zeros(B, dtype=rewards.dtype)
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t + 1 < T else values[:, t]  # bootstraps past the end
        running = rewards[:, t] + gamma * next_v - values[:, t] + gamma * lam * running
        adv[:, t] = running
    return adv, adv + values


def gae_no_values_in_returns(rewards, values, gamma, lam):
    adv, _ = gae_reversed_lists(rewards, values, gamma, lam)
    return adv, adv


def gae_forward(rewards, values, gamma, lam):
    B, T = rewards.shape
    adv, running = torch.zeros_like(rewards), torch.zeros(B, dtype=rewards.dtype)
    for t in range(T):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros(B, dtype=values.dtype)
        running = rewards[:, t] + gamma * next_v - values[:, t] + gamma * lam * running
        adv[:, t] = running
    return adv, adv + values


def klr_every_token(score, logp, ref_logp, beta):
    return -beta * (logp - ref_logp) + score[:, None]


def klr_sign(score, logp, ref_logp, beta):
    r = beta * (logp - ref_logp)
    r[:, -1] += score
    return r


def klr_first(score, logp, ref_logp, beta):
    r = -beta * (logp - ref_logp)
    r[:, 0] += score
    return r


def klr_in_place(score, logp, ref_logp, beta):
    logp[:, -1] -= score / beta  # "clever": folds the score into logp, and overwrites the caller's tensor
    return -beta * (logp - ref_logp)


WRONG = {
    "07.kl_k3": [
        (lambda lp, lq: torch.expm1(lp - lq) - (lp - lq), "inverted"),
        (lambda lp, lq: lp - lq, "k1"),
        (lambda lp, lq: 0.5 * (lp - lq) ** 2, "k2"),
        (lambda lp, lq: torch.expm1(lq - lp) + (lq - lp), "minus the log"),
    ],
    "07.kl_penalized_rewards": [
        (klr_every_token, "every token"),
        (klr_sign, "wrong sign"),
        (klr_first, "first token"),
        (lambda s, lp, lq, b: -(lp - lq) + torch.nn.functional.pad(s[:, None], (lp.shape[1] - 1, 0)), "β"),
        (klr_in_place, "in place"),
    ],
    "07.gae": [
        (gae_plain_td_sum, "no γλ decay"),
        (gae_bootstrap, "bootstraps"),
        (gae_no_values_in_returns, "advantages + values"),
        (gae_forward, "forwards"),
        (lambda r, v, gamma, lam: gae_reversed_lists(r, v, gamma, 1.0), "γ alone"),
    ],
    "07.whiten_advantages": [
        (lambda a: a - a.mean(), "only centred"),
        (lambda a: a / a.std(), "only scaled"),
        (lambda a: (a - a.mean(-1, keepdim=True)) / a.std(-1, keepdim=True), "on its own"),
    ],
    "07.ppo_clip_loss": [
        (lambda lp, lo, a, e: -(torch.exp(lp - lo) * a).mean(), "not clipped"),
        (lambda lp, lo, a, e: -torch.max(torch.exp(lp - lo) * a, torch.exp(lp - lo).clamp(1 - e, 1 + e) * a).mean(),
         "max instead of min"),
        (lambda lp, lo, a, e: torch.min(torch.exp(lp - lo) * a, torch.exp(lp - lo).clamp(1 - e, 1 + e) * a).mean(),
         "minus is missing"),
        (lambda lp, lo, a, e: -torch.min(lp / lo * a, (lp / lo).clamp(1 - e, 1 + e) * a).mean(), "exp(logp_new"),
    ],
    "07.predict_best_of_n_kl": [
        (lambda: math.log(16), "upper bound"),
        (lambda: 15 / 16, "correction term"),
        (lambda: 0, "does change"),
    ],
}

test_accepts_a_correct_implementation, test_rejects_a_wrong_implementation_with_its_hint = make_tests(CORRECT, WRONG)
