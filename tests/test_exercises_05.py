"""Notebook 05's exercises: other correct implementations pass, plausible mistakes get their hint."""
import torch
import torch.nn.functional as F

from exercise_harness import make_tests


def labels_loop(prompt_ids, response_ids):
    out = []
    for _ in prompt_ids:
        out.append(-100)
    for t in response_ids:
        out.append(int(t))
    return out


def loss_manual(logits, labels):
    tgt = labels[:, 1:]
    keep = tgt != -100
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, tgt.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return -(logp * keep).sum() / keep.sum()


def loss_flat(logits, labels):
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


def lp_loop(logits, labels):
    out = []
    logp = torch.log_softmax(logits.double(), -1)
    for b in range(labels.shape[0]):
        s = 0.0
        for t in range(labels.shape[1] - 1):
            if labels[b, t + 1] != -100:
                s += logp[b, t, labels[b, t + 1]].item()
        out.append(s)
    return torch.tensor(out, dtype=logits.dtype)


def lp_ce(logits, labels):
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=-100, reduction="none")
    return -nll.sum(-1)


def collate_loop(examples, pad_id):
    T = max(len(i) for i, _ in examples)
    ids = [list(i) + [pad_id] * (T - len(i)) for i, _ in examples]
    lab = [list(l) + [-100] * (T - len(l)) for _, l in examples]
    mask = [[1] * len(i) + [0] * (T - len(i)) for i, _ in examples]
    return torch.tensor(ids), torch.tensor(lab), torch.tensor(mask)


def collate_pad_labels_with_pad(examples, pad_id):
    ids, lab, mask = collate_loop(examples, pad_id)
    return ids, torch.where(mask.bool(), lab, torch.tensor(pad_id)), mask


def collate_left(examples, pad_id):
    T = max(len(i) for i, _ in examples)
    ids = [[pad_id] * (T - len(i)) + list(i) for i, _ in examples]
    lab = [[-100] * (T - len(l)) + list(l) for _, l in examples]
    mask = [[0] * (T - len(i)) + [1] * len(i) for i, _ in examples]
    return torch.tensor(ids), torch.tensor(lab), torch.tensor(mask)


def collate_inverted_mask(examples, pad_id):
    ids, lab, mask = collate_loop(examples, pad_id)
    return ids, lab, 1 - mask


CORRECT = {
    "05.sft_labels": [labels_loop, lambda p, r: [-100 for _ in p] + [int(x) for x in r]],
    "05.masked_lm_loss": [loss_manual, loss_flat],
    "05.response_logprob": [lp_loop, lp_ce],
    "05.collate": [collate_loop],
}

WRONG = {
    "05.sft_labels": [(lambda p, r: list(p) + list(r), "nothing is masked"),
                      (lambda p, r: list(p) + [-100] * len(r), "other way round"),
                      (lambda p, r: [-100] * (len(p) + 1) + list(r[1:]), "off by one"),
                      (lambda p, r: torch.tensor([-100] * len(p) + list(r)), "python list"),
                      (lambda p, r: [-100] * len(p) + list(r)[:-1], "labels for")],
    "05.masked_lm_loss": [(lambda lg, lb: F.cross_entropy(lg.flatten(0, 1), lb.flatten(), ignore_index=-100), "no shift"),
                          (lambda lg, lb: loss_manual(lg, lb) * (lb[:, 1:] != -100).sum() / lb[:, 1:].numel(), "every position"),
                          (lambda lg, lb: loss_manual(lg, lb) * (lb[:, 1:] != -100).sum(), "a sum")],
    "05.response_logprob": [(lambda lg, lb: lp_ce(lg, lb) / (lb[:, 1:] != -100).sum(-1), "sum"),
                            (lambda lg, lb: lg[:, :-1].gather(-1, lb[:, 1:].clamp_min(0).unsqueeze(-1)).squeeze(-1)
                             .mul(lb[:, 1:] != -100).sum(-1), "log_softmax"),
                            (lambda lg, lb: torch.log_softmax(lg[:, :-1], -1).gather(-1, lb[:, 1:].clamp_min(0)
                             .unsqueeze(-1)).squeeze(-1).sum(-1), "masked positions are counted")],
    "05.collate": [(collate_pad_labels_with_pad, "-100"), (collate_left, "left"), (collate_inverted_mask, "inverted")],
}

test_accepts_a_correct_implementation, test_rejects_a_wrong_implementation_with_its_hint = make_tests(CORRECT, WRONG)
