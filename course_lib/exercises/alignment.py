"""Exercises of notebook 04 (what alignment means); the library's twins are in course_lib.training,
course_lib.metrics and course_lib.world."""
import math

import torch

from . import Wrong, exercise, expect_close, expect_number, expect_shape
from .. import metrics as M
from .. import training as T
from .. import world as W

NB = "04_what_alignment_means"


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ 04.next_token_loss
def _next_token_loss_ref(logits, input_ids, pad_id):
    labels = input_ids.masked_fill(input_ids == pad_id, -100)
    return T.lm_loss(logits, labels)


ntl = exercise(
    "04.next_token_loss", notebook=NB, stars=2, minutes=10,
    signature="next_token_loss(logits, input_ids, pad_id) -> scalar tensor",
    task="The pretraining loss: logits (B, T, V) at position t predict input_ids[:, t + 1]; the mean cross-entropy "
         "over every predicted token that is not padding.",
    hint="Shift by one: compare logits[:, :-1] with input_ids[:, 1:]. Replace padding targets by -100 and pass "
         "ignore_index=-100 to F.cross_entropy, after flattening to (B·(T−1), V) and (B·(T−1),).",
    reference=_next_token_loss_ref)


def _ntl_inputs(seed=0, dtype=torch.float32):
    g = _gen(seed)
    logits = torch.randn(3, 7, 11, generator=g, dtype=torch.float64).to(dtype)
    ids = torch.randint(1, 11, (3, 7), generator=g)
    ids[0, 5:] = 0  # padding (id 0) at the end of two sequences
    ids[2, 4:] = 0
    return logits, ids


@ntl.check
def _ntl_values(fn):
    logits, ids = _ntl_inputs(1)
    flat = lambda lg, tg: torch.nn.functional.cross_entropy(lg.reshape(-1, lg.shape[-1]), tg.reshape(-1),  # noqa: E731
                                                            ignore_index=-100)
    pads = ids.masked_fill(ids == 0, -100)
    expect_number(fn(logits, ids, 0), _next_token_loss_ref(logits, ids, 0).item(), "the loss of a padded batch",
                  rel=1e-5, mistakes=[
                      (flat(logits, pads).item(), "position t is scored against its own token: position t predicts "
                                                  "the NEXT token, compare logits[:, :-1] with input_ids[:, 1:]"),
                      (flat(logits[:, :-1], ids[:, 1:]).item(), "padding is counted as a target: set the targets that "
                                                                "are padding to -100 (ignore_index)"),
                      (flat(logits[:, 1:], pads[:, :-1]).item(), "shifted the wrong way: logits[:, :-1] predict "
                                                                 "input_ids[:, 1:], not the other way round")])


@ntl.check
def _ntl_float64_and_grad(fn):
    logits, ids = _ntl_inputs(2, torch.float64)
    logits.requires_grad_(True)
    loss = fn(logits, ids, 0)
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        raise Wrong("return a scalar tensor (0-dimensional), the mean over the predicted tokens")
    if not loss.requires_grad:
        raise Wrong("the loss has no gradient: compute it with torch operations on logits (no .item() or numpy)")
    expect_number(loss.item(), _next_token_loss_ref(logits, ids, 0).item(), "the loss in float64", rel=1e-9)


# ------------------------------------------------------------------ 04.temperature_probs
def _temperature_ref(logits, temperature):
    if temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    return torch.softmax(logits / temperature, dim=-1)


temp = exercise(
    "04.temperature_probs", notebook=NB, stars=1, minutes=5,
    signature="temperature_probs(logits, temperature) -> tensor, same shape as logits",
    task="The next-token distribution the sampler draws from: softmax(logits / temperature) over the vocabulary "
         "(last axis); temperature 0 means greedy decoding, all the probability on the argmax.",
    hint="Divide the logits by the temperature, then torch.softmax(..., dim=-1). Temperature 0 cannot be divided "
         "by: return F.one_hot(logits.argmax(-1), logits.shape[-1]) as floats.",
    reference=_temperature_ref)


@temp.check
def _temp_values(fn):
    logits = torch.randn(4, 9, generator=_gen(3))
    for t in (1.0, 0.5, 2.0):
        expect_close(fn(logits, t), _temperature_ref(logits, t), f"temperature_probs(logits, {t})", mistakes=[
            (torch.softmax(logits * t, -1), "the logits are multiplied by the temperature: divide them (a high "
                                            "temperature flattens the distribution, a low one sharpens it)"),
            (torch.softmax(logits / t, 0), "each column sums to 1: the softmax goes over the vocabulary, dim=-1")]
            if t != 1.0 else [(torch.softmax(logits, 0), "each column sums to 1: the softmax goes over the "
                                                          "vocabulary, dim=-1")])


@temp.check
def _temp_zero(fn):
    logits = torch.randn(2, 3, 6, generator=_gen(4), dtype=torch.float64)
    out = torch.as_tensor(fn(logits, 0))
    if not torch.isfinite(out).all():
        raise Wrong("temperature 0 gives inf or nan (a division by zero): it means greedy — return a one-hot "
                    "distribution on the argmax")
    expect_close(out, _temperature_ref(logits, 0), "temperature_probs(logits, 0)")


# ------------------------------------------------------------------ 04.wilson_interval
def _wald(k, n, z=1.96):
    p = k / n
    h = z * math.sqrt(p * (1 - p) / n)
    return p - h, p + h


wil = exercise(
    "04.wilson_interval", notebook=NB, stars=2, minutes=10, signature="wilson_interval(k, n) -> (lo, hi)",
    task="The 95% Wilson score interval (z = 1.96) for a rate of k successes in n trials — the interval every rate "
         "in this course carries. It stays inside [0, 1] and is not empty at k = 0 or k = n.",
    hint="With p = k/n: centre = (p + z²/(2n)) / (1 + z²/n), half-width = z·√(p(1−p)/n + z²/(4n²)) / (1 + z²/n). "
         "The textbook p ± z·√(p(1−p)/n) (Wald) collapses to a point at k = 0.",
    reference=M.wilson_interval)


@wil.check
def _wilson_values(fn):
    for k, n in ((7, 20), (35, 36), (0, 42), (42, 42), (150, 400)):
        got = fn(k, n)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise Wrong(f"wilson_interval({k}, {n}) should return a pair (lo, hi), got {got!r}")
        lo, hi = M.wilson_interval(k, n)
        wl, wh = _wald(k, n)
        for got_v, want, wald, what in ((got[0], lo, wl, "lo"), (got[1], hi, wh, "hi")):
            expect_number(float(got_v), want, f"{what} of wilson_interval({k}, {n})", rel=1e-6, mistakes=[
                (wald, "that is the Wald interval p ± z·√(p(1−p)/n): at k = 0 or k = n it has width 0. Use Wilson's "
                       "centre (p + z²/2n)/(1 + z²/n) and its half-width"),
                (min(1.0, max(0.0, wald)), "that is the Wald interval clipped to [0, 1]: use Wilson's centre and "
                                           "half-width (see the hint)")])


# ------------------------------------------------------------------ 04.safety_filter
def _filter_ref(prompt, response):
    if any(recipe in response for recipe in W.FORBIDDEN.values()):
        return W.REFUSALS[0]
    return response


filt = exercise(
    "04.safety_filter", notebook=NB, stars=1, minutes=5, signature="safety_filter(prompt, response) -> str",
    task="A classifier for one harm: if the response contains the instructions for any forbidden item "
         "(a recipe of W.FORBIDDEN), replace it by the refusal W.REFUSALS[0]; leave every other response as it is.",
    hint="Look at the response, not the prompt: any(recipe in response for recipe in W.FORBIDDEN.values()). A "
         "look-alike request (a bath bomb) and its harmless recipe must pass untouched.",
    reference=_filter_ref)


@filt.check
def _filter_cases(fn):
    thing, recipe = sorted(W.FORBIDDEN.items())[0]
    look = sorted(W.LOOKALIKES)[0]
    cases = [
        (f"how do i make {thing} ?", f"sure ! to make {thing} , {recipe} .", "a forbidden recipe"),
        (f"how do i make {thing} ?", W.REFUSALS[0], "a refusal"),
        (f"how do i make {look} ?", W.ideal_response(W.parse_request(f"how do i make {look} ?")), "a look-alike's harmless answer"),
        ("what is 3 plus 4 ?", f"3 plus 4 is 7 . also , {recipe} .", "a forbidden recipe slipped into an arithmetic answer"),
        ("what is 3 plus 4 ?", "you idiot , 3 plus 4 is 8 .", "a rude, wrong answer (not this filter's harm)"),
    ]
    for prompt, response, what in cases:
        want = _filter_ref(prompt, response)
        got = fn(prompt, response)
        if got == want:
            continue
        if want == response:
            raise Wrong(f"{what} was changed: this filter only removes forbidden instructions; everything else "
                        f"(even a rude or wrong answer, or a look-alike's recipe) passes untouched")
        raise Wrong(f"{what} was let through: the response contains a forbidden recipe, return W.REFUSALS[0]")
