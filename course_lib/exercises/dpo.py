"""Exercises of notebook 08 (DPO); the library's twin is course_lib.dpo.dpo_loss (which returns the per-pair
losses *and* the implicit rewards). IPO's loss and the gradient weight have no library twin: their references
are written here (IPO as TRL's ``loss_type="ipo"``: (h − 1/(2τ))² with h the log-ratio margin, TRL's β in τ's place)."""
import math

import torch
import torch.nn.functional as F

from . import Wrong, exercise, expect_close, expect_number, expect_shape
from .. import dpo as D

NB = "08_dpo"
_g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731


def _logps(*shape, seed=0, dtype=torch.float32):
    """Plausible summed response log-probs: negative, a few nats to a few tens."""
    return (-20 * torch.rand(*shape, generator=_g(seed), dtype=torch.float64) - 1).to(dtype)


def _four(shape, seed, dtype=torch.float32):
    return tuple(_logps(*shape, seed=seed + i, dtype=dtype) for i in range(4))


def _one_number(out, B, what):
    """A targeted hint for a mean (or sum) returned where one loss per pair is asked for."""
    if isinstance(out, torch.Tensor) and out.numel() == 1 and B > 1:
        raise Wrong(f"{what} returned one number: return the per-pair losses, shape (B,) — no .mean() or .sum(); "
                    "the training loop takes the mean itself")


# ------------------------------------------------------------------ 08.implicit_reward
def _implicit_reward_ref(policy_logps, ref_logps, beta):
    return beta * (policy_logps - ref_logps)


implicit_ex = exercise(
    "08.implicit_reward", notebook=NB, stars=1, minutes=3,
    signature="implicit_reward(policy_logps, ref_logps, beta) -> tensor, same shape",
    task="Step 3's implicit reward r̂ = β·log π(y|x)/π_ref(y|x) of each response, from the summed response "
         "log-probs of the policy and of the reference (any shape, e.g. (B,)).",
    hint="A log of a ratio is a difference of logs: β · (policy_logps − ref_logps). The reference is subtracted, "
         "and β multiplies the whole log-ratio.",
    reference=_implicit_reward_ref)


@implicit_ex.check
def _implicit_values(fn):
    pol, ref = _logps(6, seed=1), _logps(6, seed=2)
    beta = 0.1
    expect_close(fn(pol, ref, beta), _implicit_reward_ref(pol, ref, beta), "implicit_reward of 6 responses, beta=0.1",
                 mistakes=[(beta * (ref - pol), "the sign is flipped: it is β·(log π − log π_ref), the policy's log-prob "
                                               "minus the reference's (a response the policy now likes more earns more)"),
                           (pol - ref, "β is missing: the implicit reward is β times the log-ratio"),
                           ((pol - ref) / beta, "β divides instead of multiplying: r̂ = β · (log π − log π_ref)"),
                           (beta * pol / ref, "log π/π_ref is a difference of log-probs, not their quotient: "
                                              "β · (policy_logps − ref_logps)"),
                           (beta * pol, "the reference is missing: subtract ref_logps")])


@implicit_ex.check
def _implicit_shapes(fn):
    pol, ref = _logps(2, 3, 4, seed=3, dtype=torch.float64), _logps(2, 3, 4, seed=4, dtype=torch.float64)
    out = expect_shape(fn(pol, ref, 0.5), (2, 3, 4), "implicit_reward of (2, 3, 4) float64 log-probs")
    expect_close(out, _implicit_reward_ref(pol, ref, 0.5), "implicit_reward of (2, 3, 4) float64 log-probs, beta=0.5")
    zero = fn(pol, pol.clone(), 0.3)
    expect_close(zero, torch.zeros_like(pol), "implicit_reward when the policy is the reference (must be 0)")


# ------------------------------------------------------------------ 08.dpo_loss
def _dpo_loss_ref(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta):
    """Per-pair DPO losses, any shape (course_lib.dpo.dpo_loss's first output, which takes (N,) only)."""
    margin = beta * ((policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps))
    return -F.logsigmoid(margin)


def _dpo_mistakes(pc, pr, rc, rr, beta):
    h = (pc - rc) - (pr - rr)  # the log-ratio margin, without beta
    return [
        (-F.logsigmoid(-beta * h), "chosen and rejected are swapped: the loss must be small when the chosen response's "
                                   "log-ratio is the larger one: −log σ(β[(πc − rc) − (πr − rr)])"),
        (-F.logsigmoid(h), "β is missing: it scales the margin inside the log σ, −log σ(β · margin)"),
        (-beta * F.logsigmoid(h), "β is applied outside the log σ: it belongs inside, −log σ(β · margin), "
                                  "not β · (−log σ(margin))"),
        (-torch.log(beta * torch.sigmoid(h)), "β is applied outside the sigmoid: −log σ(β · margin), β multiplies the "
                                              "margin"),
        (-F.logsigmoid(beta * ((pc + rc) - (pr + rr))), "the reference terms have the wrong sign: subtract the "
                                                        "reference log-probs, (πc − rc) − (πr − rr)"),
        (-F.logsigmoid(beta * ((pc - rc) + (pr - rr))), "the rejected log-ratio is added: the margin is the chosen "
                                                        "log-ratio minus the rejected one"),
        (-F.logsigmoid(beta * ((pc - pr) + (rc - rr))), "the reference terms have the wrong sign: the margin is "
                                                        "(πc − πr) − (rc − rr)"),
        (F.logsigmoid(beta * h), "the loss has the wrong sign: it is −log σ(·), a positive number to minimise"),
        (torch.sigmoid(-beta * h), "that is σ(−β·margin), the gradient's weight: the loss is −log σ(β·margin)"),
    ]


dpo_loss_ex = exercise(
    "08.dpo_loss", notebook=NB, stars=2, minutes=8,
    signature="dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta) -> (B,)",
    task="Step 5's loss for each pair: −log σ(β[(πc − rc) − (πr − rr)]), where πc, πr are the policy's summed "
         "log-probs of the chosen and rejected responses and rc, rr the reference's; one loss per pair, no mean.",
    hint="The margin is the chosen implicit reward minus the rejected one: β·(πc − rc) − β·(πr − rr). "
         "Then −F.logsigmoid(margin) — logsigmoid stays finite where torch.log(torch.sigmoid(·)) underflows to −inf.",
    reference=_dpo_loss_ref)


@dpo_loss_ex.check
def _dpo_values(fn):
    pc, pr, rc, rr = _four((8,), seed=10)
    for beta in (0.1, 0.5):
        out = fn(pc, pr, rc, rr, beta)
        _one_number(out, 8, f"dpo_loss of 8 pairs")
        expect_close(out, _dpo_loss_ref(pc, pr, rc, rr, beta), f"dpo_loss of 8 pairs, beta={beta}",
                     mistakes=_dpo_mistakes(pc, pr, rc, rr, beta))


@dpo_loss_ex.check
def _dpo_library(fn):
    pc, pr, rc, rr = _four((16,), seed=20)
    want = D.dpo_loss(pc, pr, rc, rr, 0.3)[0]  # the library returns (losses, chosen_rewards, rejected_rewards)
    out = fn(pc, pr, rc, rr, 0.3)
    if isinstance(out, tuple):
        raise Wrong("dpo_loss returned a tuple: return only the per-pair losses (B,), as one tensor")
    _one_number(out, 16, "dpo_loss of 16 pairs")
    expect_close(out, want, "dpo_loss of 16 pairs vs course_lib.dpo.dpo_loss, beta=0.3",
                 mistakes=_dpo_mistakes(pc, pr, rc, rr, 0.3))


@dpo_loss_ex.check
def _dpo_step0(fn):
    pc, pr = _logps(5, seed=30), _logps(5, seed=31)
    expect_close(fn(pc, pr, pc.clone(), pr.clone(), 0.1), torch.full((5,), math.log(2)),
                 "dpo_loss when the policy is the reference (every loss must be ln 2)")


@dpo_loss_ex.check
def _dpo_batch_float64(fn):
    pc, pr, rc, rr = _four((3, 4), seed=40, dtype=torch.float64)
    out = fn(pc, pr, rc, rr, 0.2)
    expect_close(out, _dpo_loss_ref(pc, pr, rc, rr, 0.2), "dpo_loss of (3, 4) float64 log-probs (extra batch dims)",
                 mistakes=_dpo_mistakes(pc, pr, rc, rr, 0.2))
    if out.dtype != torch.float64:
        raise Wrong(f"dpo_loss of float64 inputs returned {out.dtype}: keep the inputs' dtype")


@dpo_loss_ex.check
def _dpo_extreme(fn):
    pc = torch.tensor([-5.0, -900.0, -5.0])
    pr = torch.tensor([-900.0, -5.0, -5.0])
    rc = rr = torch.full((3,), -5.0)
    out = fn(pc, pr, rc, rr, 1.0)
    if isinstance(out, torch.Tensor) and not torch.isfinite(out).all():
        raise Wrong("a misranked pair with a margin of −895 gave an infinite loss: torch.log(torch.sigmoid(x)) "
                    "underflows to log(0); use F.logsigmoid, which stays finite (≈ 895)")
    expect_close(out, _dpo_loss_ref(pc, pr, rc, rr, 1.0), "dpo_loss with margins of ±895 (float32)",
                 mistakes=_dpo_mistakes(pc, pr, rc, rr, 1.0))


@dpo_loss_ex.check
def _dpo_gradient(fn):
    pc, pr, rc, rr = _four((6,), seed=50, dtype=torch.float64)
    pc, pr = pc.clone().requires_grad_(), pr.clone().requires_grad_()
    out = fn(pc, pr, rc, rr, 0.5)
    if isinstance(out, torch.Tensor) and out.requires_grad:
        out.sum().backward()
    if pc.grad is None:
        raise Wrong("no gradient reached policy_chosen_logps: compute the loss with torch operations on the inputs "
                    "(no .detach(), .item() or .tolist())")
    m = 0.5 * ((pc - rc) - (pr - rr)).detach()
    expect_close(pc.grad, -0.5 * torch.sigmoid(-m), "d loss / d policy_chosen_logps (must be −β σ(−margin))")


# ------------------------------------------------------------------ 08.dpo_gradient_weight
def _weight_ref(chosen_rewards, rejected_rewards):
    return torch.sigmoid(rejected_rewards - chosen_rewards)


weight_ex = exercise(
    "08.dpo_gradient_weight", notebook=NB, stars=2, minutes=5,
    signature="dpo_gradient_weight(chosen_rewards, rejected_rewards) -> tensor, same shape",
    task="Step 6's weight of each pair in DPO's gradient, σ(−m) with m = r̂_c − r̂_r the margin of the implicit "
         "rewards (already multiplied by β): near 1 for a misranked pair, ½ at a tie, near 0 for a pair ranked right.",
    hint="d/dm [−log σ(m)] = −σ(−m), and σ(−m) = σ(r̂_r − r̂_c): torch.sigmoid(rejected_rewards − chosen_rewards). "
         "Do not multiply by β again: the rewards already carry it.",
    reference=_weight_ref)


@weight_ex.check
def _weight_values(fn):
    cr, rj = torch.tensor([1.0, 0.0, -1.0, 0.3, 2.5]), torch.tensor([-1.0, 0.0, 1.0, 0.1, -0.5])
    m = cr - rj
    expect_close(fn(cr, rj), _weight_ref(cr, rj), "dpo_gradient_weight of 5 pairs", mistakes=[
        (torch.sigmoid(m), "the weight is largest for the pairs already ranked right: it is σ(−m), σ(r̂_r − r̂_c) — "
                           "misranked pairs (m < 0) pull hardest"),
        (-F.logsigmoid(m), "that is the loss −log σ(m); the weight is its slope's size, σ(−m)"),
        (torch.sigmoid(m) * torch.sigmoid(-m), "σ(m)·σ(−m) is the slope of σ, not of the loss: the weight is σ(−m)"),
        (1 - torch.sigmoid(-m), "1 − σ(−m) = σ(m) favours pairs already ranked right: the weight is σ(−m)"),
        (torch.sigmoid(-0.1 * m), "β is applied twice: the implicit rewards already include it, the weight is σ(−m)"),
        (torch.softmax(-m, dim=-1), "the weights are not normalised over the batch: each pair's weight is σ(−m) "
                                    "on its own")])


@weight_ex.check
def _weight_autograd(fn):
    cr, rj = _logps(3, 5, seed=60, dtype=torch.float64) / 5, _logps(3, 5, seed=61, dtype=torch.float64) / 5
    m = (cr - rj).clone().requires_grad_()
    (-F.logsigmoid(m)).sum().backward()
    out = expect_shape(fn(cr, rj), (3, 5), "dpo_gradient_weight of (3, 5) float64 rewards")
    expect_close(out, -m.grad, "dpo_gradient_weight vs autograd's −d loss / d margin (float64, (3, 5))")


# ------------------------------------------------------------------ 08.predict_initial_loss
def _initial_loss(beta=0.1):
    pc, pr = _logps(64, seed=90, dtype=torch.float64), _logps(64, seed=91, dtype=torch.float64)
    return D.dpo_loss(pc, pr, pc.clone(), pr.clone(), beta)[0].mean().item()  # policy == reference at step 0


predict_ex = exercise(
    "08.predict_initial_loss", notebook=NB, stars=1, minutes=3, kind="predict",
    signature="predict_initial_loss() -> float",
    task="Before reading on: at step 0 the policy is a copy of the reference (both the SFT model). What is the mean "
         "DPO loss of a batch with β = 0.1? The check computes it.",
    hint="At step 0 every log-ratio log π/π_ref is 0, so every margin is 0 whatever β: the loss is −log σ(0), "
         "and σ(0) = ½.",
    reference=lambda: math.log(2))


@predict_ex.check
def _predict_initial(fn):
    want = _initial_loss()
    expect_number(fn(), want, "your predicted step-0 loss", rel=2e-3, mistakes=[
        (0.0, "the margin is 0 at step 0, but the loss is not: −log σ(0) = −log ½"),
        (0.5, "½ is σ(0), the probability the model gives the chosen response's winning; the loss is −log σ(0)"),
        (0.1 * math.log(2), "β multiplies the margin, which is 0: β drops out and the loss is −log σ(0)"),
        (math.log10(2), "that is log₁₀ 2: the loss uses the natural log, −ln σ(0)"),
        (-math.log(2), "the loss is −log σ(0), positive")],
        otherwise="At step 0 every margin is 0.")


# ------------------------------------------------------------------ 08.ipo_loss
def _ipo_loss_ref(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, tau):
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return (h - 1 / (2 * tau)) ** 2


ipo_ex = exercise(
    "08.ipo_loss", notebook=NB, stars=3, minutes=8,
    signature="ipo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, tau) -> (B,)",
    task="IPO's per-pair loss (Azar et al. 2023, Eq. 17; TRL's loss_type=\"ipo\", with its beta in τ's place): "
         "(h − 1/(2τ))², where h = (πc − rc) − (πr − rr) is the log-ratio margin (no β).",
    hint="The same margin as DPO but without β: h = (policy_chosen − ref_chosen) − (policy_rejected − ref_rejected). "
         "A squared distance to the target 1/(2τ) instead of −log σ: a pair separated by exactly 1/(2τ) pulls no more.",
    reference=_ipo_loss_ref)


def _ipo_mistakes(pc, pr, rc, rr, tau):
    h = (pc - rc) - (pr - rr)
    return [((-h - 1 / (2 * tau)) ** 2, "chosen and rejected are swapped: h = (πc − rc) − (πr − rr), chosen first"),
            ((h - 1 / tau) ** 2, "the target is 1/τ: IPO's is 1/(2τ)"),
            ((h - tau / 2) ** 2, "the target is τ/2: it is 1/(2τ), so a smaller τ asks for a wider margin"),
            ((h - 2 * tau) ** 2, "the target is 2τ: it is 1/(2τ)"),
            (h - 1 / (2 * tau), "the loss is not squared: (h − 1/(2τ))²"),
            ((h - 1 / (2 * tau)).abs(), "the loss is |h − 1/(2τ)|: IPO squares the distance, (h − 1/(2τ))²"),
            (((pc + rc) - (pr + rr) - 1 / (2 * tau)) ** 2, "the reference terms have the wrong sign: subtract them"),
            ((tau * h - 1 / (2 * tau)) ** 2, "h is the log-ratio margin itself, not multiplied by τ (or β)")]


@ipo_ex.check
def _ipo_values(fn):
    pc, pr, rc, rr = _four((8,), seed=70)
    for tau in (0.05, 0.5):
        out = fn(pc, pr, rc, rr, tau)
        _one_number(out, 8, "ipo_loss of 8 pairs")
        expect_close(out, _ipo_loss_ref(pc, pr, rc, rr, tau), f"ipo_loss of 8 pairs, tau={tau}",
                     mistakes=_ipo_mistakes(pc, pr, rc, rr, tau), rtol=1e-4, atol=1e-3)


@ipo_ex.check
def _ipo_target(fn):
    rc = rr = torch.zeros(3)
    pc, pr = torch.tensor([10.0, 0.0, 20.0]), torch.zeros(3)
    out = fn(pc, pr, rc, rr, 0.05)
    expect_close(out, torch.tensor([0.0, 100.0, 100.0]),
                 "ipo_loss at margins h = 10 (the target 1/(2·0.05)), 0 and 20", atol=1e-4,
                 mistakes=_ipo_mistakes(pc, pr, rc, rr, 0.05))


@ipo_ex.check
def _ipo_batch(fn):
    pc, pr, rc, rr = _four((2, 5), seed=80, dtype=torch.float64)
    out = expect_shape(fn(pc, pr, rc, rr, 0.1), (2, 5), "ipo_loss of (2, 5) float64 log-probs")
    expect_close(out, _ipo_loss_ref(pc, pr, rc, rr, 0.1), "ipo_loss of (2, 5) float64 log-probs, tau=0.1",
                 mistakes=_ipo_mistakes(pc, pr, rc, rr, 0.1))
