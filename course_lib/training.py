"""Next-token training: tokenised examples, padded batches, and the skeleton every training loop shares.

An example is (input_ids, labels) with labels == -100 where no loss is taken (padding,
and in SFT the prompt). The model shifts labels itself: position t predicts token t + 1.

The skeleton, used by `train` here and by SFT, the reward model, PPO and DPO:
    BatchSampler   shuffled passes over the data, batch after batch (a batch may span two passes)
    adamw          AdamW with linear warm-up, then constant or cosine decay
    run_loop       step after step with a progress bar, evaluations every eval_every steps,
                   and the wall-clock seconds of training with the evaluations' time left out
"""
import math
import numbers
import random
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

IGNORE = -100


# ---------------------------------------------------------------- checks shared by the methods
def check_int(name, value, minimum=1):
    """`value` as an int >= minimum, else a ValueError that names the parameter."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_number(name, value, low=None, high=None, low_open=False):
    """`value` as a finite float in [low, high] ((low, high] with low_open), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value!r}")
    return float(value)


def check_step_settings(cfg):
    """The settings every step-based config shares: steps, batch_size, warmup, lr, weight_decay, grad_clip."""
    check_int("steps", cfg.steps)
    check_int("batch_size", cfg.batch_size)
    check_int("warmup", cfg.warmup, 0)
    check_number("lr", cfg.lr, 0, low_open=True)
    check_number("weight_decay", cfg.weight_decay, 0)
    check_number("grad_clip", cfg.grad_clip, 0)


# ---------------------------------------------------------------- examples and batches
def lm_example(tokenizer, text):
    """A pretraining example: predict every token of `text`."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, got {type(text).__name__}")
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return ids, list(ids)


def collate(examples, pad_id, left_pad=False):
    """Pad a list of (ids, labels) to one (B, T) batch: input_ids, labels (-100 on padding), attention_mask."""
    if not examples:
        raise ValueError("no examples to collate: the batch is empty")
    T = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), T), dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        if len(ids) != len(lab):
            raise ValueError(f"example {i}: {len(ids)} input ids but {len(lab)} labels")
        if not len(ids):
            raise ValueError(f"example {i} has no tokens: drop empty texts before batching")
        s = slice(T - len(ids), T) if left_pad else slice(0, len(ids))
        input_ids[i, s] = torch.tensor(ids)
        labels[i, s] = torch.tensor(lab)
        mask[i, s] = 1
    return input_ids, labels, mask


def lm_loss(logits, labels):
    """Mean next-token cross-entropy over the positions whose label is not -100.

    Taught inline in notebook 04 §3 (The tokenizer and the model); the notebook asserts they agree."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits must be (B, T, vocab) and labels (B, T), got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    if not bool((labels[:, 1:] != IGNORE).any()):
        raise ValueError("no labelled tokens to predict (every label after the first is -100): the loss of an "
                         "empty batch is undefined")
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE)


# ---------------------------------------------------------------- the skeleton
class BatchSampler:
    """Indices of batches drawn from shuffled passes over n items; a new pass starts when one runs out."""

    def __init__(self, n, rng):
        self.n, self.rng = check_int("the number of items", n), rng
        self.order, self.pos = [], 0

    def next(self, batch_size):
        """The next batch_size indices (they may run into the next pass)."""
        check_int("batch_size", batch_size)
        idx = []
        while len(idx) < batch_size:
            if self.pos == len(self.order):
                self.order, self.pos = self.rng.sample(range(self.n), self.n), 0
            idx.append(self.order[self.pos])
            self.pos += 1
        return idx


def adamw(params, lr, weight_decay=0.0, warmup=0, decay_steps=None):
    """(AdamW, its schedule): the learning rate warms up linearly over `warmup` steps, then stays
    constant, or with decay_steps follows a cosine down to 0 at step decay_steps."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters (every parameter has requires_grad=False)")
    check_number("lr", lr, 0, low_open=True)
    check_number("weight_decay", weight_decay, 0)
    check_int("warmup", warmup, 0)
    if decay_steps is not None:
        check_int("decay_steps", decay_steps)

    def factor(s):
        f = min(1.0, (s + 1) / warmup) if warmup else 1.0
        if decay_steps:
            f = f * 0.5 * (1 + math.cos(math.pi * min(s, decay_steps) / decay_steps))
        return f

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def optimizer_step(loss, opt, sched, params, grad_clip):
    """Backward, clip the gradient norm (unless grad_clip is 0), step the optimizer and its schedule."""
    check_number("grad_clip (0: no clipping)", grad_clip, 0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    if sched is not None:
        sched.step()


@dataclass
class LoopLog:
    """What run_loop saw: each step's numbers by name, the evaluations, and the training seconds."""

    records: dict = field(default_factory=dict)  # name -> [value per step]
    evals: list = field(default_factory=list)  # [(step, eval_fn()), ...]
    seconds: float = 0.0  # wall-clock of the steps, evaluations excluded


def run_loop(step, n_steps, desc="training", progress=True, eval_fn=None, eval_every=None, eval_at_start=False,
             show=(), show_every=10, unit="steps"):
    """Call step(i) -> {name: float} for i in range(n_steps), with a progress bar showing the names in `show`.

    With progress, a live tqdm bar (removed when done) and then one printed line that stays in a saved notebook:
    "SFT: 150 steps in 6.4 s (+ 1.2 s evaluating); last loss 0.912".

    eval_fn() runs after every eval_every-th step and after the last (and before the first with
    eval_at_start); its time is not counted in the returned seconds."""
    n_steps = check_int("the number of steps", n_steps)
    if eval_every is not None:
        check_int("eval_every", eval_every)
    if eval_fn is not None and eval_every is None:
        raise ValueError("an eval_fn needs eval_every (evaluate every how many steps?); pass eval_every=n_steps "
                         "to evaluate at the end only")
    check_int("show_every", show_every)
    log = LoopLog()
    bar = tqdm(total=n_steps, desc=desc, leave=False, unit=unit.rstrip("s")) if progress else None
    eval_seconds, t0 = 0.0, time.perf_counter()

    def evaluate(at):
        nonlocal eval_seconds
        t = time.perf_counter()
        log.evals.append((at, eval_fn()))
        eval_seconds += time.perf_counter() - t

    if eval_fn is not None and eval_every and eval_at_start:
        evaluate(0)
    for i in range(n_steps):
        for k, v in step(i).items():
            log.records.setdefault(k, []).append(v)
        if bar is not None:
            bar.update(1)
            if show and i % show_every == 0:
                bar.set_postfix({k: f"{log.records[k][-1]:.3f}" for k in show})
        if eval_fn is not None and eval_every and ((i + 1) % eval_every == 0 or i + 1 == n_steps):
            evaluate(i + 1)
    if bar is not None:
        bar.close()
    log.seconds = time.perf_counter() - t0 - eval_seconds
    if progress:  # the bar leaves no trace (a saved bar shows a stale "0%"); this line is what the saved output keeps
        last = ", ".join(f"{k} {log.records[k][-1]:.3f}" for k in show if log.records.get(k))
        print(f"{desc}: {n_steps} {unit} in {log.seconds:.1f} s" + (f" (+ {eval_seconds:.1f} s evaluating)"
              if eval_seconds else "") + (f"; last {last}" if last else ""), flush=True)
    return log


# ---------------------------------------------------------------- next-token training
@dataclass
class TrainConfig:
    """Next-token training (pretraining; SFT extends it)."""

    steps: int = 300  # AdamW steps
    batch_size: int = 32  # examples per step
    lr: float = 1e-3  # peak learning rate
    warmup: int = 20  # steps of linear warm-up, then cosine decay to 0 at `steps`
    weight_decay: float = 0.01  # AdamW's decoupled weight decay
    grad_clip: float = 1.0  # largest gradient norm (0: no clipping)
    seed: int = 0  # the batch order (random.Random(seed)) and torch.manual_seed(seed)

    def __post_init__(self):
        check_step_settings(self)


@dataclass
class TrainResult:
    losses: list  # the batch loss at each step
    seconds: float  # wall-clock of training, evaluations excluded
    tokens: int  # tokens trained on (padding excluded)
    evals: list  # [(step, eval_fn(model)), ...]


def train(model, examples, cfg=None, pad_id=0, eval_fn=None, eval_every=None, progress=True, desc="training"):
    """Train `model` in place on (input_ids, labels) examples with next-token cross-entropy.

    Taught inline in notebook 04 §3 (The tokenizer and the model); the notebook asserts they agree."""
    cfg = TrainConfig() if cfg is None else cfg
    if not examples:
        raise ValueError("no training examples")
    check_int("pad_id (the tokenizer's padding token id)", pad_id, 0)
    sampler = BatchSampler(len(examples), random.Random(cfg.seed))
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = adamw(params, cfg.lr, cfg.weight_decay, cfg.warmup, decay_steps=cfg.steps)

    def step(_):
        model.train()
        input_ids, labels, mask = collate([examples[i] for i in sampler.next(cfg.batch_size)], pad_id)
        loss = lm_loss(model(input_ids, attention_mask=mask).logits, labels)
        optimizer_step(loss, opt, sched, params, cfg.grad_clip)
        return {"loss": loss.item(), "tokens": int(mask.sum())}

    log = run_loop(step, cfg.steps, desc, progress, eval_fn and (lambda: eval_fn(model)), eval_every, show=("loss",))
    model.eval()
    return TrainResult(log.records["loss"], log.seconds, sum(log.records["tokens"]), log.evals)


@torch.no_grad()
def eval_loss(model, examples, batch_size=64, pad_id=0):
    """Mean next-token loss over examples (token-weighted)."""
    if not examples:
        raise ValueError("no examples to evaluate")
    check_int("batch_size", batch_size)
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        input_ids, labels, mask = collate(examples[i:i + batch_size], pad_id)
        logits = model(input_ids, attention_mask=mask).logits
        n = int((labels[:, 1:] != IGNORE).sum())
        total += lm_loss(logits, labels).item() * n
        count += n
    if count == 0:
        raise ValueError("the examples have no labelled tokens to predict")
    return total / count
