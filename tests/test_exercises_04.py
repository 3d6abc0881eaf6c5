"""Notebook 04's exercises: other correct implementations pass, plausible mistakes get their hint."""
import math

import torch
import torch.nn.functional as F

from course_lib import world as W
from exercise_harness import make_tests


def ntl_loop(logits, input_ids, pad_id):
    logp = torch.log_softmax(logits, -1)
    total, count = 0.0, 0
    for b in range(input_ids.shape[0]):
        for t in range(input_ids.shape[1] - 1):
            target = int(input_ids[b, t + 1])
            if target != pad_id:
                total = total - logp[b, t, target]
                count += 1
    return total / count


def ntl_mask(logits, input_ids, pad_id):
    tgt = input_ids[:, 1:]
    keep = tgt != pad_id
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), tgt, reduction="none")
    return (nll * keep).sum() / keep.sum()


def ntl_no_shift(logits, input_ids, pad_id):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                           input_ids.masked_fill(input_ids == pad_id, -100).reshape(-1), ignore_index=-100)


def ntl_with_pad(logits, input_ids, pad_id):
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1))


def ntl_item(logits, input_ids, pad_id):
    return torch.tensor(ntl_mask(logits, input_ids, pad_id).item())


def temp_manual(logits, temperature):
    if temperature == 0:
        out = torch.zeros_like(logits)
        return out.scatter(-1, logits.argmax(-1, keepdim=True), 1.0)
    z = logits / temperature
    z = z - z.amax(-1, keepdim=True)
    return z.exp() / z.exp().sum(-1, keepdim=True)


def temp_tiny(logits, temperature):  # a tiny temperature is as greedy as 0
    return torch.softmax(logits / max(temperature, 1e-9), dim=-1)


def wilson_direct(k, n, z=1.96):
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


def wilson_quadratic(k, n):  # the roots of (p̂ - p)² = z² p (1 - p) / n
    z2, p = 1.96 ** 2, k / n
    a, b, c = 1 + z2 / n, -(2 * p + z2 / n), p * p
    d = math.sqrt(b * b - 4 * a * c)
    return ((-b - d) / (2 * a), (-b + d) / (2 * a))


def wald(k, n):
    p = k / n
    h = 1.96 * math.sqrt(p * (1 - p) / n)
    return p - h, p + h


def filter_regex(prompt, response):
    return W.REFUSALS[0] if [r for r in W.FORBIDDEN.values() if response.find(r) >= 0] else response


def filter_by_prompt(prompt, response):
    return W.REFUSALS[0] if W.parse_request(prompt).family == "forbidden" else response


def filter_by_noun(prompt, response):
    return W.REFUSALS[0] if any(n in prompt for n in W.DANGEROUS_NOUNS) else response


CORRECT = {
    "04.next_token_loss": [ntl_loop, ntl_mask],
    "04.temperature_probs": [temp_manual, temp_tiny],
    "04.wilson_interval": [wilson_direct, wilson_quadratic],
    "04.safety_filter": [filter_regex],
}

WRONG = {
    "04.next_token_loss": [(ntl_no_shift, "next token"), (ntl_with_pad, "padding is counted"), (ntl_item, "no gradient")],
    "04.temperature_probs": [(lambda lg, t: torch.softmax(lg * t, -1), "multiplied"),
                             (lambda lg, t: torch.softmax(lg / t, 0), "vocabulary"),
                             (lambda lg, t: torch.softmax(lg / t, -1), "greedy")],
    "04.wilson_interval": [(wald, "wald"), (lambda k, n: tuple(min(1, max(0, v)) for v in wald(k, n)), "wald"),
                           (lambda k, n: wilson_direct(k, n)[0], "pair")],
    "04.safety_filter": [(filter_by_prompt, "let through"), (filter_by_noun, "passes untouched"),
                         (lambda p, r: r, "let through")],
}

test_accepts_a_correct_implementation, test_rejects_a_wrong_implementation_with_its_hint = make_tests(CORRECT, WRONG)
