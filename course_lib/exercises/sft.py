"""Exercises of notebook 05 (SFT); the library's twins are in course_lib.sft, course_lib.training and
course_lib.chat."""
import torch

from . import Wrong, exercise, expect_close, expect_number, expect_shape
from .. import chat as C
from .. import training as T

NB = "05_sft"
IGNORE = T.IGNORE


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ 05.sft_labels
def _sft_labels_ref(prompt_ids, response_ids):
    return [IGNORE] * len(prompt_ids) + list(response_ids)


labels_ex = exercise(
    "05.sft_labels", notebook=NB, stars=1, minutes=5, signature="sft_labels(prompt_ids, response_ids) -> list[int]",
    task="The labels for the sequence prompt_ids + response_ids: −100 on every prompt position (the loss never "
         "trains the model to write the user's turn), the response's own ids on the rest.",
    hint="One label per input position: [-100] * len(prompt_ids) + list(response_ids). The one-position shift "
         "happens inside the loss, not here.",
    reference=_sft_labels_ref)


@labels_ex.check
def _labels_values(fn):
    for prompt, response in (([5, 8, 2, 9], [11, 12, 3]), ([7], [4, 4, 4, 1]), ([1, 2, 3, 4, 5, 6], [9])):
        got = fn(list(prompt), list(response))
        want = _sft_labels_ref(prompt, response)
        if isinstance(got, torch.Tensor):
            raise Wrong("return a Python list of ints (labels.tolist() if you built a tensor)")
        got = list(got)
        if got == want:
            continue
        if len(got) != len(prompt) + len(response):
            raise Wrong(f"{len(got)} labels for {len(prompt) + len(response)} tokens: one label per position of "
                        "prompt_ids + response_ids (the shift happens in the loss)")
        if got == list(prompt) + list(response):
            raise Wrong("nothing is masked: put -100 on every prompt position")
        if got == list(prompt) + [IGNORE] * len(response):
            raise Wrong("the response is masked and the prompt is trained on: it is the other way round")
        if got == [IGNORE] * (len(prompt) - 1) + list(prompt[-1:]) + list(response) or \
                got == [IGNORE] * (len(prompt) + 1) + list(response[1:]):
            raise Wrong("the mask is off by one position: exactly len(prompt_ids) labels are -100")
        raise Wrong(f"sft_labels({prompt}, {response}) = {got}, expected {want}")


# ------------------------------------------------------------------ 05.collate
col = exercise(
    "05.collate", notebook=NB, stars=2, minutes=10,
    signature="collate(examples, pad_id) -> (input_ids, labels, attention_mask)",
    task="Pad a list of (ids, labels) pairs of different lengths to one (B, T) batch, T the longest: input_ids "
         "padded on the right with pad_id, labels with −100, attention_mask 1 on real tokens and 0 on padding "
         "(all torch.long).",
    hint="Start from torch.full((B, T), pad_id), torch.full((B, T), -100) and torch.zeros((B, T)) (dtype=torch.long) "
         "and copy each example into row i, positions 0 … len − 1. Padding labels must be -100, never pad_id, or "
         "the loss trains the model to predict padding.",
    reference=T.collate)


@col.check
def _collate_values(fn):
    examples = [([4, 5, 6], [-100, 5, 6]), ([7, 8, 9, 10, 11], [-100, -100, 9, 10, 11]), ([3], [3])]
    got = fn([(list(a), list(b)) for a, b in examples], 0)
    if not isinstance(got, (tuple, list)) or len(got) != 3:
        raise Wrong("return three tensors: (input_ids, labels, attention_mask)")
    want = T.collate(examples, 0)
    names = ("input_ids", "labels", "attention_mask")
    for g, w, name in zip(got, want, names):
        g = expect_shape(g, w.shape, name)
        if g.dtype != torch.long:
            raise Wrong(f"{name} has dtype {g.dtype}: use torch.long (token ids and labels are indices)")
    ids, labels, mask = got
    if torch.equal(labels, want[0]) or (labels == 0).sum() > (want[1] == 0).sum():
        raise Wrong("padding labels hold pad_id: pad the labels with -100 so the loss ignores padding")
    left = T.collate(examples, 0, left_pad=True)
    if torch.equal(ids, left[0]):
        raise Wrong("padded on the left: pad on the right (the course's training batches keep tokens at "
                    "positions 0 … len − 1)")
    if torch.equal(mask, 1 - want[2]):
        raise Wrong("the attention mask is inverted: 1 on real tokens, 0 on padding")
    for g, w, name in zip(got, want, names):
        expect_close(g, w, name)


# ------------------------------------------------------------------ 05.masked_lm_loss
def _flat_ce(logits, targets):
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), targets.reshape(-1),
                                             ignore_index=IGNORE)


loss_ex = exercise(
    "05.masked_lm_loss", notebook=NB, stars=2, minutes=8, signature="masked_lm_loss(logits, labels) -> scalar tensor",
    task="The SFT loss: logits (B, T, V), labels (B, T) with −100 on the prompt and the padding; the mean "
         "next-token cross-entropy over the labelled positions only.",
    hint="logits[:, :-1] predict labels[:, 1:]; F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), "
         "ignore_index=-100) averages over the labelled tokens only (not over all B·(T−1)).",
    reference=T.lm_loss)


def _loss_inputs(seed, dtype=torch.float32):
    g = _gen(seed)
    logits = torch.randn(3, 8, 13, generator=g, dtype=torch.float64).to(dtype)
    labels = torch.randint(0, 13, (3, 8), generator=g)
    labels[:, :3] = IGNORE      # the prompt
    labels[1, 6:] = IGNORE      # padding
    return logits, labels


@loss_ex.check
def _loss_values(fn):
    logits, labels = _loss_inputs(5)
    targets = labels[:, 1:]
    keep = targets != IGNORE
    per_tok = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 13).double(),
                                                targets.clamp_min(0).reshape(-1), reduction="none").view(3, 7)
    expect_number(fn(logits, labels), T.lm_loss(logits, labels).item(), "the masked loss", rel=1e-5, mistakes=[
        (_flat_ce(logits, labels).item(), "no shift: logits at position t predict the label at t + 1 — compare "
                                          "logits[:, :-1] with labels[:, 1:]"),
        ((per_tok * keep).sum().item() / keep.numel(), "averaged over every position, masked ones included: "
                                                       "average over the labelled tokens only"),
        ((per_tok * keep).sum().item(), "a sum: the loss is the mean over the labelled tokens")])


@loss_ex.check
def _loss_grad(fn):
    logits, labels = _loss_inputs(6, torch.float64)
    logits.requires_grad_(True)
    loss = fn(logits, labels)
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0 or not loss.requires_grad:
        raise Wrong("return a 0-dimensional tensor with a gradient (torch operations on logits, no .item())")
    loss.backward()
    if logits.grad[:, :2].abs().sum() != 0:
        raise Wrong("the masked prompt positions get a gradient: positions whose next label is -100 must not "
                    "count")


# ------------------------------------------------------------------ 05.response_logprob
def _response_logprob_ref(logits, labels):
    return C.token_logprobs(logits, labels).sum(-1)


lp_ex = exercise(
    "05.response_logprob", notebook=NB, stars=2, minutes=10,
    signature="response_logprob(logits, labels) -> tensor (B,)",
    task="log π(response | prompt) for each sequence: the sum over the labelled positions (labels ≠ −100) of the "
         "log-probability the model gives the next token. PPO and DPO (notebooks 07–08) are built on it.",
    hint="logp = torch.log_softmax(logits[:, :-1], -1); pick the labelled token with "
         "logp.gather(-1, labels[:, 1:].clamp_min(0).unsqueeze(-1)).squeeze(-1); zero the positions whose label is "
         "-100 and sum over T.",
    reference=_response_logprob_ref)


@lp_ex.check
def _lp_values(fn):
    logits, labels = _loss_inputs(7)
    want = _response_logprob_ref(logits, labels)
    tgt = labels[:, 1:]
    keep = tgt != IGNORE
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    raw = logits[:, :-1].gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    out = expect_shape(fn(logits, labels), (3,), "response_logprob of a batch of 3")
    expect_close(out, want, "the response log-probabilities", atol=1e-4, mistakes=[
        ((logp * keep).sum(-1) / keep.sum(-1), "a mean over positions: the log-probability of a sequence is the SUM of its "
                                 "tokens' log-probabilities"),
        (logp.sum(-1), "masked positions are counted: zero the positions whose label is -100 before summing"),
        ((raw * keep).sum(-1), "raw logits are summed: take log_softmax over the vocabulary first"),
        ((torch.log_softmax(logits, -1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
          * (labels != IGNORE)).sum(-1), "no shift: logits at t give the probability of the token at t + 1")])
    if not (out <= 0).all():
        raise Wrong("a log-probability is ≤ 0")


@lp_ex.check
def _lp_float64(fn):
    logits, labels = _loss_inputs(8, torch.float64)
    expect_close(fn(logits, labels), _response_logprob_ref(logits, labels), "response_logprob in float64", atol=1e-4)
