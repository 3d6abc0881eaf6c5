"""Next-token training: tokenised examples, padded batches, and one short training loop.

An example is (input_ids, labels) with labels == -100 where no loss is taken (padding,
and in SFT the prompt). The model shifts labels itself: position t predicts token t + 1.
"""
import math
import random
import time

import torch

IGNORE = -100


def lm_example(tokenizer, text):
    """A pretraining example: predict every token of `text`."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return ids, list(ids)


def collate(examples, pad_id, left_pad=False):
    """Pad a list of (ids, labels) to one (B, T) batch: input_ids, labels (-100 on padding), attention_mask."""
    T = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        if len(ids) != len(lab):
            raise ValueError(f"example {i}: {len(ids)} input ids but {len(lab)} labels")
        s = slice(T - len(ids), T) if left_pad else slice(0, len(ids))
        input_ids[i, s] = torch.tensor(ids)
        labels[i, s] = torch.tensor(lab)
        mask[i, s] = 1
    return input_ids, labels, mask


def lm_loss(logits, labels):
    """Mean next-token cross-entropy over the positions whose label is not -100."""
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE)


def train(model, examples, steps, batch_size=32, lr=1e-3, seed=0, warmup=20, weight_decay=0.01,
          grad_clip=1.0, pad_id=0, progress=True, desc="training", log_every=10, eval_fn=None, eval_every=None):
    """Train `model` on `examples` for `steps` AdamW steps (linear warmup, cosine decay).

    Returns {"losses": [...], "seconds": s, "tokens": n, "evals": [(step, value), ...]}."""
    if not examples:
        raise ValueError("no training examples")
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    order, pos = [], 0
    losses, evals, tokens = [], [], 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc=desc, leave=False)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        batch = []
        while len(batch) < batch_size:
            if pos == len(order):
                order, pos = rng.sample(range(len(examples)), len(examples)), 0
            batch.append(examples[order[pos]])
            pos += 1
        input_ids, labels, mask = collate(batch, pad_id)
        logits = model(input_ids, attention_mask=mask).logits
        loss = lm_loss(logits, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        tokens += int(mask.sum())
        if bar is not None:
            bar.update(1)
            if step % log_every == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        if eval_fn is not None and eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
            evals.append((step + 1, eval_fn(model)))
            model.train()
    if bar is not None:
        bar.close()
    model.eval()
    return {"losses": losses, "seconds": time.perf_counter() - t0, "tokens": tokens, "evals": evals}


@torch.no_grad()
def eval_loss(model, examples, batch_size=64, pad_id=0):
    """Mean next-token loss over examples (token-weighted)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        input_ids, labels, mask = collate(examples[i:i + batch_size], pad_id)
        logits = model(input_ids, attention_mask=mask).logits
        n = int((labels[:, 1:] != IGNORE).sum())
        total += lm_loss(logits, labels).item() * n
        count += n
    return total / max(count, 1)


def token_logprobs(logits, labels):
    """log p(labels[:, t+1] | tokens up to t) for each position, (B, T-1); 0 where the label is -100.

    Summing over the last dimension gives a response's log-probability when the prompt and
    padding are labelled -100 (as `sft.sft_example` and `collate` do)."""
    targets = labels[:, 1:]
    keep = targets != IGNORE
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = logp.gather(-1, targets.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return picked * keep


def sequence_logprobs(model, tokenizer, prompts, responses, batch_size=64):
    """Summed log-probability of each response given its prompt, (N,), with gradients if enabled."""
    from .sft import sft_examples

    rows = [{"prompt": p, "response": r} for p, r in zip(prompts, responses)]
    out = []
    for i in range(0, len(rows), batch_size):
        ids, labels, mask = collate(sft_examples(tokenizer, rows[i:i + batch_size]), tokenizer.pad_token_id)
        out.append(token_logprobs(model(ids, attention_mask=mask).logits, labels).sum(-1))
    return torch.cat(out)
