"""Exercises of notebook 07 (RLHF with PPO); the library's twins are in course_lib.ppo. The library's functions
take a response mask (padding) and some return extras (the clip fraction, the per-token KL); the exercises work on
full-length (B, T) responses, so each reference below calls its twin with an all-ones mask and keeps the first
output."""
import math

import torch

from . import Wrong, exercise, expect_close, expect_number, expect_shape
from .. import ppo as PPO

NB = "07_rlhf_ppo"
_g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=_g(seed), dtype=torch.float64).to(dtype)


def _call(fn, *args):
    """fn on copies of the tensor arguments, so an in-place edit cannot change what the reference sees."""
    return fn(*(a.clone() if isinstance(a, torch.Tensor) else a for a in args))


def _logps(*shape, seed=0, spread=0.5, dtype=torch.float32):
    """(logp, other_logp): plausible log-probs of sampled tokens (negative), the second near the first."""
    a = -torch.rand(*shape, generator=_g(seed), dtype=torch.float64) * 3 - 0.05
    b = a + torch.randn(*shape, generator=_g(seed + 1), dtype=torch.float64) * spread
    return a.to(dtype), b.clamp_max(-0.01).to(dtype)


# ------------------------------------------------------------------ 07.kl_k3
k3_ex = exercise(
    "07.kl_k3", notebook=NB, stars=2, minutes=6, signature="kl_k3(logp, ref_logp) -> tensor, same shape",
    task="Schulman's k3 estimate of KL(π ‖ π_ref) from the log-probs of tokens sampled from π: (ρ − 1) − log ρ with "
         "ρ = π_ref(x) / π(x), per token.",
    hint="log ρ = ref_logp − logp (the reference over the policy, not the other way round); then "
         "`torch.expm1(log_rho) - log_rho` — expm1(x) = exp(x) − 1, accurate for small x. It is never negative.",
    reference=lambda logp, ref_logp: PPO.kl_estimate(logp, ref_logp, "k3"))


def _k3_mistakes(lp, lq):
    r = lp - lq
    return [(torch.expm1(r) - r, "ρ is inverted: ρ = π_ref / π, so log ρ = ref_logp − logp (that version weights the "
                                 "tokens the policy likes, not the ones the reference likes)"),
            (r, "that is k1 = log π − log π_ref; k3 = (ρ − 1) − log ρ with ρ = π_ref / π"),
            (0.5 * r ** 2, "that is k2 = (log π − log π_ref)² / 2; k3 = (ρ − 1) − log ρ with ρ = π_ref / π"),
            (torch.expm1(-r) - r, "the sign of log ρ is flipped: k3 = (ρ − 1) − log ρ, minus the log"),
            (torch.expm1(-r), "the − log ρ term is missing: ρ − 1 alone averages to 0 under π, k3 = (ρ − 1) − log ρ")]


@k3_ex.check
def _k3_values(fn):
    lp, lq = _logps(4, 9, seed=40)
    want = PPO.kl_estimate(lp, lq, "k3")
    expect_close(_call(fn, lp, lq), want, "kl_k3 of (4, 9) log-probs", mistakes=_k3_mistakes(lp, lq))


@k3_ex.check
def _k3_batch(fn):
    lp, lq = _logps(2, 3, 7, seed=42, spread=1.5, dtype=torch.float64)
    out = expect_shape(_call(fn, lp, lq), lp.shape, "kl_k3 of (2, 3, 7) float64 log-probs")
    if bool((out < -1e-9).any()):
        raise Wrong("kl_k3 is negative somewhere: (ρ − 1) − log ρ ≥ 0 for every ρ > 0 — check the formula and "
                    "that ρ = π_ref / π")
    expect_close(out, PPO.kl_estimate(lp, lq, "k3"), "kl_k3 of (2, 3, 7) float64 log-probs",
                 mistakes=_k3_mistakes(lp, lq))


@k3_ex.check
def _k3_close(fn):
    lp = torch.full((5,), -2.0, dtype=torch.float64)
    lq = lp + torch.tensor([0.0, 1e-6, -1e-6, 1e-3, -1e-3], dtype=torch.float64)
    expect_close(_call(fn, lp, lq), PPO.kl_estimate(lp, lq, "k3"), "kl_k3 when the policy equals the reference (or "
                 "nearly: ρ ≈ 1)", atol=1e-9, otherwise="At ρ = 1 k3 is exactly 0.")


# ------------------------------------------------------------------ 07.kl_penalized_rewards
def _klr_ref(score, logp, ref_logp, beta):
    return PPO.kl_penalised_rewards(score, logp, ref_logp, torch.ones_like(logp), beta)[0]


klr_ex = exercise(
    "07.kl_penalized_rewards", notebook=NB, stars=2, minutes=8,
    signature="kl_penalized_rewards(score, logp, ref_logp, beta) -> (B, T)",
    task="The per-token rewards PPO optimises: every response token pays −β·(logp − ref_logp) (the k1 estimate of "
         "its KL to the reference), and the reward model's score of the whole response, score (B,), is added at "
         "its last token. logp and ref_logp are (B, T).",
    hint="rewards = -beta * (logp - ref_logp), shape (B, T); then rewards[:, -1] += score (clone first if you "
         "write in place into a tensor you did not create). The score is one number per response: it goes to the "
         "token that finished the response, not to every token.",
    reference=_klr_ref)


def _klr_mistakes(score, lp, lq, beta):
    kl = lp - lq
    base = -beta * kl
    at_first = base.clone()
    at_first[:, 0] += score
    plus = beta * kl
    plus[:, -1] += score
    no_beta = -kl
    no_beta[:, -1] += score
    return [(base + score[:, None], "the score is added at every token: it is one number per response, the "
                                    "reward for the whole sequence — add it at the last token only"),
            (at_first, "the score is added at the first token: the reward model scores the finished response, so "
                       "it arrives at the last token (rewards[:, -1])"),
            (plus, "the KL term has the wrong sign: drifting from the reference costs reward, −β·(logp − ref_logp)"),
            (no_beta, "the KL term is not scaled by β: each token pays −β·(logp − ref_logp)"),
            (base, "the score is missing: add the reward model's score at each response's last token")]


@klr_ex.check
def _klr_values(fn):
    lp, lq = _logps(3, 6, seed=50)
    score = _randn(3, seed=52) * 2
    want, mistakes = _klr_ref(score, lp, lq, 0.1), _klr_mistakes(score, lp, lq, 0.1)
    expect_close(fn(score.clone(), lp.clone(), lq.clone(), 0.1), want, "kl_penalized_rewards for (3, 6) log-probs, "
                 "beta = 0.1", mistakes=mistakes)


@klr_ex.check
def _klr_inputs_untouched(fn):
    lp, lq = _logps(4, 5, seed=53, dtype=torch.float64)
    score = _randn(4, seed=55, dtype=torch.float64)
    kept = lp.clone(), lq.clone(), score.clone()
    want, mistakes = _klr_ref(score, lp, lq, 0.05), _klr_mistakes(score, lp, lq, 0.05)
    out = fn(score, lp, lq, 0.05)
    if not all(torch.equal(a, b) for a, b in zip((lp, lq, score), kept)):
        raise Wrong("your function changed its inputs in place: build the rewards in a new tensor (or clone) "
                    "before adding the score")
    expect_close(out, want, "kl_penalized_rewards for float64 (4, 5) inputs, beta = 0.05", mistakes=mistakes)


@klr_ex.check
def _klr_beta0(fn):
    lp, lq = _logps(2, 4, seed=56)
    score = torch.tensor([1.5, -0.5])
    want, mistakes = _klr_ref(score, lp, lq, 0.0), _klr_mistakes(score, lp, lq, 0.0)
    expect_close(fn(score.clone(), lp.clone(), lq.clone(), 0.0), want, "kl_penalized_rewards with beta = 0 (only "
                 "the score, at the last token)", mistakes=_klr_mistakes(score, lp, lq, 0.0))


# ------------------------------------------------------------------ 07.gae
def _gae_ref(rewards, values, gamma, lam):
    return PPO.gae(rewards, values, gamma, lam)


gae_ex = exercise(
    "07.gae", notebook=NB, stars=3, minutes=15, signature="gae(rewards, values, gamma, lam) -> (advantages, returns)",
    task="Generalised advantage estimation on (B, T) rewards and values (V(s_t), the value before token t). Every "
         "episode ends after step T − 1, so nothing is bootstrapped beyond it. Return advantages (B, T) and "
         "returns = advantages + values.",
    hint="Walk backwards in time. δ_t = r_t + γ·V_{t+1} − V_t with V_T = 0 (the episode is over); "
         "A_t = δ_t + γλ·A_{t+1} with A_T = 0. Keep a running A of shape (B,) and fill advantages[:, t] for "
         "t = T − 1 down to 0.",
    reference=_gae_ref)


def _gae_variants(r, v, gamma, lam):
    """(advantages, hint) of the plausible mistakes."""
    T = r.shape[1]
    nxt = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], 1)
    delta = r + gamma * nxt - v

    def backward(d, decay):
        a, run = torch.zeros_like(d), torch.zeros_like(d[:, 0])
        for t in reversed(range(T)):
            run = d[:, t] + decay * run
            a[:, t] = run
        return a

    forward = torch.zeros_like(delta)
    run = torch.zeros_like(delta[:, 0])
    for t in range(T):
        run = delta[:, t] + gamma * lam * run
        forward[:, t] = run
    boot_last = r + gamma * torch.cat([v[:, 1:], v[:, -1:]], 1) - v
    boot_roll = r + gamma * torch.roll(v, -1, 1) - v
    return [(backward(delta, 1.0), "no γλ decay: the TD residuals are summed as they are — each step back "
                                   "multiplies the running advantage by γ·λ, A_t = δ_t + γλ·A_{t+1}"),
            (backward(delta, gamma), "the running advantage decays by γ alone: GAE decays it by γ·λ, "
                                     "A_t = δ_t + γλ·A_{t+1}"),
            (backward(delta, lam), "the running advantage decays by λ alone: GAE decays it by γ·λ, "
                                   "A_t = δ_t + γλ·A_{t+1}"),
            (delta, "that is the one-step TD residual δ_t: accumulate it backwards, A_t = δ_t + γλ·A_{t+1}"),
            (forward, "the advantages are accumulated forwards in time: A_t depends on the future, so walk "
                      "backwards from t = T − 1, A_t = δ_t + γλ·A_{t+1}"),
            (backward(boot_last, gamma * lam), "the last step bootstraps from V_{T−1}: the episode ends after step "
                                               "T − 1, so V_T = 0 — δ_{T−1} = r_{T−1} − V_{T−1}"),
            (backward(boot_roll, gamma * lam), "the last step bootstraps from V_0 (a roll wrapped around): the "
                                               "episode ends after step T − 1, so V_T = 0 — δ_{T−1} = r_{T−1} − V_{T−1}")]


def _gae_case(fn, r, v, gamma, lam, what):
    out = _call(fn, r, v, gamma, lam)
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise Wrong(f"{what}: return a pair (advantages, returns), got {type(out).__name__}")
    adv, ret = out
    want_adv, want_ret = _gae_ref(r, v, gamma, lam)
    expect_close(adv, want_adv, f"{what}: the advantages", mistakes=_gae_variants(r, v, gamma, lam))
    expect_close(ret, want_ret, f"{what}: the returns", mistakes=[
        (want_adv, "the returns are the advantages alone: returns = advantages + values (the value model's target)"),
        (want_adv - v, "returns = advantages + values, not minus"),
        (torch.flip(torch.cumsum(torch.flip(r, [1]), 1), [1]),
         "those are the Monte Carlo returns (reward-to-go): with λ < 1 the value model's target is advantages + "
         "values")])


@gae_ex.check
def _gae_values(fn):
    r, v = _randn(3, 7, seed=60), _randn(3, 7, seed=61)
    _gae_case(fn, r, v, 0.9, 0.8, "gae of (3, 7) rewards and values, gamma = 0.9, lam = 0.8")


@gae_ex.check
def _gae_last_token(fn):
    r = torch.zeros(2, 6)
    r[:, -1] = torch.tensor([1.0, -2.0])  # the reward model's score at the last token, as in PPO for LMs
    v = _randn(2, 6, seed=62, dtype=torch.float64) * 0.5
    _gae_case(fn, r.double(), v, 1.0, 0.95, "gae of float64 (2, 6) with the reward at the last token, gamma = 1, "
              "lam = 0.95")


@gae_ex.check
def _gae_limits(fn):
    r, v = _randn(2, 5, seed=63), _randn(2, 5, seed=64)
    _gae_case(fn, r, v, 1.0, 0.0, "gae with lam = 0 (one-step TD: A_t = δ_t)")
    _gae_case(fn, r, v, 1.0, 1.0, "gae with gamma = lam = 1 (Monte Carlo: returns = reward-to-go)")


# ------------------------------------------------------------------ 07.whiten_advantages
def _whiten_ref(advantages):
    return PPO.whiten(advantages, torch.ones_like(advantages))


whiten_ex = exercise(
    "07.whiten_advantages", notebook=NB, stars=1, minutes=4,
    signature="whiten_advantages(advantages) -> tensor, same shape",
    task="Whiten the advantages of a whole rollout: subtract their mean and divide by their standard deviation, "
         "both taken over every entry of the tensor (all responses and tokens together).",
    hint="(a - a.mean()) / (a.std() + 1e-8) — mean and std over all entries (no dim), so responses keep their "
         "relative sizes. Whether std is the biased or unbiased one hardly matters for thousands of tokens.",
    reference=_whiten_ref)


@whiten_ex.check
def _whiten_values(fn):
    a = _randn(16, 256, seed=70) * torch.linspace(0.2, 3.0, 16)[:, None] + torch.linspace(-1, 3, 16)[:, None]
    mean, std = a.mean(), a.std()
    row = (a - a.mean(-1, keepdim=True)) / a.std(-1, keepdim=True)
    col = (a - a.mean(0, keepdim=True)) / a.std(0, keepdim=True)
    expect_close(_call(fn, a), _whiten_ref(a), "whiten_advantages of a (16, 256) rollout", atol=2e-3, rtol=2e-3, mistakes=[
        (a - mean, "the advantages are only centred: divide by their standard deviation too"),
        (a / std, "the advantages are only scaled: subtract their mean first"),
        (row, "each response is whitened on its own (mean and std over dim=-1): take them over the whole rollout, "
              "so a response with larger advantages keeps them"),
        (col, "each position is whitened across responses (dim=0): take mean and std over every entry"),
        ((a - mean) / std ** 2, "divided by the variance: divide by the standard deviation")])


@whiten_ex.check
def _whiten_batch(fn):
    a = _randn(2, 8, 128, seed=71, dtype=torch.float64) * 5 + 1
    out = expect_shape(_call(fn, a), a.shape, "whiten_advantages of a (2, 8, 128) float64 tensor")
    expect_close(out, _whiten_ref(a), "whiten_advantages of a (2, 8, 128) float64 tensor", atol=2e-3, rtol=2e-3)


# ------------------------------------------------------------------ 07.ppo_clip_loss
def _clip_ref(logp_new, logp_old, advantages, clip_eps):
    return PPO.policy_loss(logp_new, logp_old, advantages, torch.ones_like(advantages), clip_eps)[0]


clip_ex = exercise(
    "07.ppo_clip_loss", notebook=NB, stars=2, minutes=10,
    signature="ppo_clip_loss(logp_new, logp_old, advantages, clip_eps) -> scalar",
    task="PPO's clipped surrogate, as a loss to minimise: per token, with ratio = π_new/π_old, take "
         "−min(ratio·A, clip(ratio, 1 − ε, 1 + ε)·A); return the mean over all tokens. Inputs share one shape.",
    hint="ratio = torch.exp(logp_new - logp_old) (log-probs: a ratio of probabilities is the exp of a difference); "
         "the objective min(ratio·A, ratio.clamp(1 - clip_eps, 1 + clip_eps)·A) is pessimistic; the loss is minus "
         "its mean — equivalently the mean of max(−ratio·A, −clipped·A).",
    reference=_clip_ref)


def _clip_mistakes(lp, lo, adv, eps):
    ratio = torch.exp(lp - lo)
    cl = ratio.clamp(1 - eps, 1 + eps)
    bad_ratio = lp / lo
    return [(-(ratio * adv).mean(), "the ratio is not clipped: a step that moves it past 1 ± ε must earn no further "
                                    "credit, min(ratio·A, clip(ratio, 1 − ε, 1 + ε)·A)"),
            (-torch.max(ratio * adv, cl * adv).mean(), "max instead of min: the clipped objective is the pessimistic "
                                                       "one, min(ratio·A, clipped·A) — as a loss, max(−ratio·A, "
                                                       "−clipped·A)"),
            (torch.min(ratio * adv, cl * adv).mean(), "the minus is missing: min(ratio·A, clipped·A) is the objective "
                                                      "to maximise; return its negative to minimise"),
            (-(cl * adv).mean(), "only the clipped term is used: take min(ratio·A, clipped·A), so moves in the "
                                 "direction that lowers the objective are never clipped away"),
            (-torch.min(bad_ratio * adv, bad_ratio.clamp(1 - eps, 1 + eps) * adv).mean(),
             "ratio = logp_new / logp_old divides log-probs: the probability ratio is exp(logp_new − logp_old)"),
            (-torch.min(ratio * adv, torch.exp((lp - lo).clamp(-eps, eps)) * adv).mean(),
             "the log-ratio is clipped to ±ε: clip the ratio itself to [1 − ε, 1 + ε]"),
            (-torch.min(ratio * adv, cl * adv).sum(), "that is the sum over tokens: take the mean")]


@clip_ex.check
def _clip_values(fn):
    lo, lp = _logps(4, 8, seed=80, spread=0.4)
    adv = _randn(4, 8, seed=82)
    expect_close(_call(fn, lp, lo, adv, 0.2), _clip_ref(lp, lo, adv, 0.2), "ppo_clip_loss of (4, 8) tokens, clip_eps = 0.2",
                 mistakes=_clip_mistakes(lp, lo, adv, 0.2))


@clip_ex.check
def _clip_batch(fn):
    lo, lp = _logps(2, 3, 10, seed=83, spread=0.6, dtype=torch.float64)
    adv = _randn(2, 3, 10, seed=85, dtype=torch.float64)
    expect_close(_call(fn, lp, lo, adv, 0.1), _clip_ref(lp, lo, adv, 0.1), "ppo_clip_loss of float64 (2, 3, 10) tokens, "
                 "clip_eps = 0.1", mistakes=_clip_mistakes(lp, lo, adv, 0.1))


@clip_ex.check
def _clip_on_policy(fn):
    lp, _ = _logps(3, 5, seed=86)
    adv = _randn(3, 5, seed=87)
    expect_close(_call(fn, lp, lp, adv, 0.2), -adv.mean(), "ppo_clip_loss on the rollout's own policy (ratio = 1)",
                 otherwise="At ratio 1 the loss is −mean(A).",
                 mistakes=[(adv.mean(), "the minus is missing: at ratio 1 the loss is −mean(A)"),
                           (torch.tensor(0.0), "ratio = 1 should give −mean(A): is the ratio exp(logp_new − "
                                               "logp_old)?")])


# ------------------------------------------------------------------ 07.predict_best_of_n_kl
bon_ex = exercise(
    "07.predict_best_of_n_kl", notebook=NB, stars=3, minutes=8, kind="predict",
    signature="predict_best_of_n_kl() -> float",
    task="Best-of-16: sample 16 responses from the SFT model and keep the one the reward model scores highest "
         "(no ties). Predict the KL, in nats, of this sampling scheme from the SFT model itself; the next cell "
         "prints it for every n.",
    hint="Rank the responses by their reward quantile u (uniform under the SFT model). The best of n has the "
         "quantile density n·u^(n−1), so the likelihood ratio to the SFT model is n·u^(n−1) and "
         "KL = E[log n + (n − 1) log u] with E[log u] = −1/n under that density. It is less than log n.",
    reference=lambda: PPO.best_of_n_kl(16))


@bon_ex.check
def _bon(fn):
    guess = fn()
    want = PPO.best_of_n_kl(16)
    expect_number(guess, want, "your best-of-16 KL", rel=0.01, mistakes=[
        (math.log(16), f"log 16 = {math.log(16):.2f} is an upper bound (the KL if the choice singled out one of 16 "
                       "equally likely outcomes); the answer is log n − (n − 1)/n"),
        (math.log2(16), "4 = log₂ 16 is in bits, and an upper bound: work in nats, log n − (n − 1)/n"),
        (15 / 16, "(n − 1)/n is only the correction term: KL = log n − (n − 1)/n"),
        (0.0, "best-of-n does change the distribution: the responses it keeps are a biased draw from the SFT model")],
        otherwise="KL = log n − (n − 1)/n for best-of-n.")
