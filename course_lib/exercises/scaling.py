"""Exercises of notebook 11 (scaling up with TRL); the library's twins are course_lib.dpo.trl_preference_rows,
course_lib.grpo.group_advantages and course_lib.grpo.grpo_loss (which also returns its statistics)."""
import torch

from . import Wrong, exercise, expect_close, expect_number
from .. import dpo as D
from .. import grpo as G

NB = "11_scaling_up_with_trl"
_g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731


# ------------------------------------------------------------------ 11.trl_preference_row
def _row_ref(prompt, chosen, rejected):
    return D.trl_preference_rows([{"prompt": prompt, "chosen": chosen, "rejected": rejected}])[0]


row_ex = exercise(
    "11.trl_preference_row", notebook=NB, stars=1, minutes=4,
    signature="trl_preference_row(prompt, chosen, rejected) -> dict",
    task="One of the course's preference pairs as a row of TRL's standard preference dataset: the keys \"prompt\", "
         "\"chosen\" and \"rejected\", written so that TRL's tokens (prompt + completion, then its EOS) are exactly the "
         "course's exchange '<|user|> P <|assistant|> R <|end|>'.",
    hint="The prompt column holds what the model sees before it answers: W.chat_prompt(prompt). Each completion starts "
         "with the space that separates it from the prompt, \" \" + response, and has no <|end|>: TRL appends the "
         "tokenizer's EOS, which is <|end|>.",
    reference=_row_ref)

_PAIRS = [("what is 3 plus 4 ?", "3 plus 4 is 7 .", "ugh , 3 plus 4 is 8 ."),
          ("who painted the blue door ?", "i do not know who painted it .", "whatever , bob did .")]


@row_ex.check
def _row_values(fn):
    for p, c, r in _PAIRS:
        got, want = fn(p, c, r), _row_ref(p, c, r)
        if not isinstance(got, dict):
            raise Wrong(f"return a dict with the keys 'prompt', 'chosen' and 'rejected', got {type(got).__name__}")
        if set(got) != set(want):
            raise Wrong(f"the row's keys are {sorted(got)}: TRL's preference columns are exactly 'prompt', 'chosen' "
                        "and 'rejected' (other columns are passed to the trainer as they are)")
        if got == want:
            continue
        if got.get("chosen") == want["rejected"] and got.get("rejected") == want["chosen"]:
            raise Wrong("chosen and rejected are swapped: 'chosen' is the response the annotators preferred")
        if got.get("prompt") in (p, " " + p, p + " "):
            raise Wrong("the prompt is not in the chat template: TRL sees exactly this text, so write "
                        "W.chat_prompt(prompt), '<|user|> P <|assistant|>'")
        if any(str(got.get(k, "")).rstrip().endswith("<|end|>") for k in ("chosen", "rejected")):
            raise Wrong("a completion ends with <|end|>: TRL appends the tokenizer's EOS (<|end|>) itself, so it "
                        "would appear twice")
        if got.get("chosen") == c or got.get("rejected") == r:
            raise Wrong("a completion lacks its leading space: the course tokenises prompt + ' ' + response, and TRL "
                        "concatenates prompt + completion as they are")
        raise Wrong(f"for {p!r} expected {want}, got {got}")


# ------------------------------------------------------------------ 11.group_advantages
def _adv_ref(rewards, k):
    return G.group_advantages(rewards, k)


adv_ex = exercise(
    "11.group_advantages", notebook=NB, stars=2, minutes=6,
    signature="group_advantages(rewards, k) -> (N,)",
    task="GRPO's advantage of each response: rewards is (N,), N = prompts × k, each prompt's k samples next to each "
         "other; return (r_i − mean of its group) / (std of its group + 1e-4), with the sample standard deviation "
         "(Bessel's correction) as TRL uses, shape (N,).",
    hint="rewards.view(-1, k) puts one prompt's group in each row; take the mean and torch's std (unbiased by default) "
         "along dim=1 with keepdim=True, and reshape back to (N,). The 1e-4 keeps a group whose rewards tie at 0 "
         "instead of 0/0.",
    reference=_adv_ref)


def _rewards(n, seed):
    return torch.rand(n, generator=_g(seed)) * 1.75


@adv_ex.check
def _adv_values(fn):
    r, k = _rewards(12, 1), 4
    g = r.view(-1, k)
    mistakes = [
        ((r - r.mean()) / (r.std() + 1e-4), "normalised over the whole batch: GRPO's baseline is the mean of the same "
                                            "prompt's k samples (rewards.view(-1, k), one group a row)"),
        (((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True, unbiased=False) + 1e-4)).reshape(-1),
         "the population std: TRL (and torch's default) divides by k − 1, Bessel's correction"),
        (((r.view(k, -1) - r.view(k, -1).mean(0)) / (r.view(k, -1).std(0) + 1e-4)).reshape(-1),
         "groups taken by stride: a prompt's k samples are next to each other, so the groups are rewards.view(-1, k)"),
        ((g - g.mean(1, keepdim=True)).reshape(-1), "not divided by the group's std (+ 1e-4)"),
    ]
    got = fn(r, k)
    if isinstance(got, torch.Tensor) and tuple(got.shape) == (3, 4):
        raise Wrong("return one advantage per response, shape (N,): reshape the (prompts, k) result with .reshape(-1)")
    expect_close(got, _adv_ref(r, k), "advantages of 3 prompts × 4 samples", mistakes=mistakes)


@adv_ex.check
def _adv_ties(fn):
    r = torch.tensor([1.0, 1.0, 1.0, 0.5, 1.5, 1.0])
    got = fn(r, 3)
    if isinstance(got, torch.Tensor) and not bool(torch.isfinite(got).all()):
        raise Wrong("a group whose rewards tie gives nan or inf: add the 1e-4 to the std before dividing")
    expect_close(got, _adv_ref(r, 3), "advantages when one group's rewards tie (must be 0 there)")


# ------------------------------------------------------------------ 11.grpo_loss
def _loss_ref(logp, old_logp, ref_logp, advantages, mask, beta, clip):
    return G.grpo_loss(logp, old_logp, ref_logp, advantages, mask, beta, clip)[0]


loss_ex = exercise(
    "11.grpo_loss", notebook=NB, stars=3, minutes=12,
    signature="grpo_loss(logp, old_logp, ref_logp, advantages, mask, beta, clip) -> scalar",
    task="GRPO's loss: per token −min(ρ·A, clip(ρ, 1−ε, 1+ε)·A) + β·k3 with ρ = exp(logp − old_logp), A the response's "
         "advantage (advantages is (B,)) and k3 = π_ref/π − log(π_ref/π) − 1; averaged over each response's masked "
         "tokens, then over the B responses. logp, old_logp, ref_logp and mask are (B, R).",
    hint="advantages[:, None] broadcasts a response's advantage over its tokens. k3 = exp(ref − logp) − (ref − logp) − 1 "
         "(never negative). Then ((per_token * mask).sum(-1) / mask.sum(-1)).mean(): each response's mean first, as the "
         "paper writes 1/|o_i| inside the sum over i.",
    reference=_loss_ref)


def _loss_batch(seed):
    g = _g(seed)
    logp = -torch.rand(4, 6, generator=g, dtype=torch.float64) * 3
    old = logp + 0.4 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    ref = logp + 0.5 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.2, -0.7, 0.3, -1.1], dtype=torch.float64)
    mask = torch.ones(4, 6, dtype=torch.float64)
    mask[0, 2:] = 0
    mask[3, 4:] = 0
    return logp, old, ref, adv, mask


def _loss_mistakes(logp, old, ref, adv, mask, beta, clip):
    ratio, a = torch.exp(logp - old), adv[:, None]
    surr = -torch.min(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    k3 = torch.exp(ref - logp) - (ref - logp) - 1
    per_seq = lambda x: ((x * mask).sum(-1) / mask.sum(-1)).mean()  # noqa: E731
    return [
        (per_seq(surr + beta * (logp - ref)), "the KL term is k1 (log π − log π_ref); GRPO's is k3 = π_ref/π − "
                                              "log(π_ref/π) − 1, never negative"),
        (per_seq(surr - beta * k3), "the KL is subtracted: the loss adds β·k3 (the objective subtracts it)"),
        ((((surr + beta * k3) * mask).sum() / mask.sum()), "a token-level mean over the whole batch (DAPO's "
                                                          "normalisation, TRL's default loss_type): GRPO averages "
                                                          "each response's tokens first, then the responses"),
        (per_seq(-ratio * a + beta * k3), "the clip is missing: take the min of ρ·A and clip(ρ, 1−ε, 1+ε)·A"),
        (per_seq(-torch.max(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a) + beta * k3),
         "max instead of min: the surrogate is pessimistic, −min(ρ·A, clip(ρ)·A)"),
        ((surr + beta * k3).mean(), "the mask is ignored: padding after a response must not count"),
    ]


@loss_ex.check
def _loss_values(fn):
    logp, old, ref, adv, mask = _loss_batch(3)
    got = fn(logp, old, ref, adv, mask, 0.1, 0.2)
    if isinstance(got, tuple):
        raise Wrong("return the scalar loss only (the library's twin also returns its statistics)")
    expect_close(got, _loss_ref(logp, old, ref, adv, mask, 0.1, 0.2), "the loss of 4 responses (beta 0.1, clip 0.2)",
                 mistakes=_loss_mistakes(logp, old, ref, adv, mask, 0.1, 0.2))


@loss_ex.check
def _loss_on_policy(fn):
    logp, _, ref, adv, mask = _loss_batch(4)
    expect_number(fn(logp, logp.clone(), ref, adv, mask, 0.0, 0.2), _loss_ref(logp, logp, ref, adv, mask, 0.0, 0.2).item(),
                  "the loss on-policy (old = logp) with beta 0: −mean of the advantages", rel=1e-6,
                  otherwise="at ratio 1 every response contributes −A_i")
    lp = logp.clone().requires_grad_(True)
    out = fn(lp, logp.clone(), ref, adv, mask, 0.0, 0.2)
    if not isinstance(out, torch.Tensor) or not out.requires_grad:
        raise Wrong("the loss has no gradient: compute it from logp with torch operations (no .item(), no .detach())")
    out.backward()
    expect_close(lp.grad, -adv[:, None] * mask / mask.sum(-1, keepdim=True) / 4,
                 "d loss / d logp on-policy: −A_i / |o_i| / B on each real token")
