"""course_lib.training: batches, the next-token loss, and the skeleton every training loop shares."""
import math
import random
import time

import numpy as np
import pytest
import torch

from course_lib import training as T
from tiny import tiny_gpt

TEXTS = ["<|user|> what is 3 plus 4 ? <|assistant|> 3 plus 4 is 7 . <|end|>", "the color of zorbin is blue .",
         "to make bread , mix flour and water and bake it .", "1 plus 1 is 2 .", "gladly ."]




# ---------------------------------------------------------------- checks
def test_check_int_and_check_number():
    assert T.check_int("n", 3) == 3 and T.check_int("n", np.int64(0), 0) == 0
    for bad in (0, -1, 2.0, True, "3", None):
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            T.check_int("n", bad)
    assert T.check_number("x", 0.5, 0, 1) == 0.5 and T.check_number("x", 1, 0, 1) == 1.0
    for bad, match in ((math.nan, "a finite"), (math.inf, "a finite"), (True, "a finite"), ("1", "a finite"),
                       (-0.1, ">= 0"), (1.5, "<= 1")):
        with pytest.raises(ValueError, match=f"x must be {match}"):
            T.check_number("x", bad, 0, 1)
    with pytest.raises(ValueError, match="> 0"):
        T.check_number("x", 0, 0, low_open=True)


# ---------------------------------------------------------------- examples, batches, loss
def test_collate_pads_right_or_left_and_masks(tok):
    ex = [([5, 6, 7], [T.IGNORE, 6, 7]), ([8], [8])]
    ids, labels, mask = T.collate(ex, pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and labels.tolist() == [[T.IGNORE, 6, 7], [8, T.IGNORE, T.IGNORE]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, labels, mask = T.collate(ex, pad_id=1, left_pad=True)
    assert ids.tolist() == [[5, 6, 7], [1, 1, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, labels = T.lm_example(tok, TEXTS[1])
    assert ids == labels and tok.decode(ids) == TEXTS[1]


def test_lm_loss_is_the_mean_over_labelled_positions():
    logits = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[1, 2, T.IGNORE, 3], [0, T.IGNORE, 5, 4]])
    logp = torch.log_softmax(logits, -1)
    terms = [-logp[b, t, labels[b, t + 1]] for b in range(2) for t in range(3) if labels[b, t + 1] != T.IGNORE]
    torch.testing.assert_close(T.lm_loss(logits, labels), torch.stack(terms).mean())


def test_eval_loss_is_token_weighted(tok):
    model = tiny_gpt(tok).eval()
    ex = [T.lm_example(tok, t) for t in TEXTS]
    with torch.no_grad():
        total = sum(T.lm_loss(model(torch.tensor([i])).logits, torch.tensor([l])).item() * (len(i) - 1) for i, l in ex)
    want = total / sum(len(i) - 1 for i, _ in ex)
    assert T.eval_loss(model, ex, batch_size=2, pad_id=tok.pad_token_id) == pytest.approx(want, rel=1e-5)


# ---------------------------------------------------------------- the skeleton
def test_batch_sampler_covers_every_index_once_per_pass_and_spans_passes():
    sampler = T.BatchSampler(5, random.Random(0))
    batches = [sampler.next(3) for _ in range(5)]  # 15 indices: three passes
    flat = [i for b in batches for i in b]
    for p in range(3):
        assert sorted(flat[5 * p:5 * p + 5]) == list(range(5))
    assert len(set(batches[1])) == 3 and batches[1][:2] == flat[3:5]  # batch 2 ends pass 1 and starts pass 2
    rng = random.Random(0)  # the order is exactly a fresh rng.sample per pass: reproducible by seed
    assert flat == [i for _ in range(3) for i in rng.sample(range(5), 5)]
    assert len(T.BatchSampler(2, random.Random(0)).next(7)) == 7  # a batch larger than the data
    with pytest.raises(ValueError, match="batch_size"):
        sampler.next(0)
    with pytest.raises(ValueError, match="number of items"):
        T.BatchSampler(0, random.Random(0))


@pytest.mark.parametrize("warmup,decay", [(4, 10), (0, 6), (3, None)])
def test_adamw_schedule_is_linear_warmup_then_cosine_or_constant(warmup, decay):
    p = torch.nn.Parameter(torch.zeros(2))
    opt, sched = T.adamw([p], 0.1, weight_decay=0.05, warmup=warmup, decay_steps=decay)
    assert opt.param_groups[0]["weight_decay"] == 0.05
    for s in range(14):
        f = min(1.0, (s + 1) / warmup) if warmup else 1.0
        if decay:
            f *= 0.5 * (1 + math.cos(math.pi * min(s, decay) / decay))
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * f, abs=1e-12), s
        opt.step()
        sched.step()
    frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        T.adamw([frozen], 0.1)
    for kw, match in ((dict(lr=0), "lr"), (dict(lr=0.1, weight_decay=-1), "weight_decay"),
                      (dict(lr=0.1, warmup=-1), "warmup"), (dict(lr=0.1, decay_steps=0), "decay_steps")):
        with pytest.raises(ValueError, match=match):
            T.adamw([p], **kw)


def test_optimizer_step_clips_the_gradient_norm():
    for clip, want in ((1.0, [3 - 0.6, 4 - 0.8]), (0, [3 - 3.0, 4 - 4.0])):
        p = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
        opt = torch.optim.SGD([p], lr=1.0)
        T.optimizer_step(0.5 * (p ** 2).sum(), opt, None, [p], clip)  # gradient (3, 4), norm 5
        torch.testing.assert_close(p.detach(), torch.tensor(want))
    with pytest.raises(ValueError, match="grad_clip"):
        T.optimizer_step(0.5 * (p ** 2).sum(), opt, None, [p], -1.0)


@pytest.mark.parametrize("n_steps,every,at_start,want", [
    (7, 3, False, [3, 6, 7]), (6, 3, False, [3, 6]), (7, 3, True, [0, 3, 6, 7]), (2, 5, True, [0, 2])])
def test_run_loop_evaluates_on_schedule(n_steps, every, at_start, want):
    seen = []
    log = T.run_loop(lambda i: seen.append(i) or {"loss": float(i), "n": 1}, n_steps, progress=False,
                     eval_fn=lambda: len(seen), eval_every=every, eval_at_start=at_start)
    assert seen == list(range(n_steps)) and log.records == {"loss": [float(i) for i in range(n_steps)],
                                                             "n": [1] * n_steps}
    assert [s for s, _ in log.evals] == want and [v for _, v in log.evals] == want  # eval after step s sees s steps


def test_run_loop_leaves_evaluation_time_out_of_the_seconds():
    log = T.run_loop(lambda i: {"x": 0.0}, 4, progress=False, eval_fn=lambda: time.sleep(0.15), eval_every=1,
                     eval_at_start=True)
    assert len(log.evals) == 5  # 0.75 s of evaluation ...
    assert 0 < log.seconds < 0.1  # ... none of it counted
    assert T.run_loop(lambda i: {"x": 0.0}, 3, progress=True, show=("x",)).evals == []


def test_run_loop_refuses_a_schedule_it_cannot_follow():
    with pytest.raises(ValueError, match="eval_every"):
        T.run_loop(lambda i: {}, 3, progress=False, eval_fn=lambda: 0)  # would never evaluate
    with pytest.raises(ValueError, match="eval_every"):
        T.run_loop(lambda i: {}, 3, progress=False, eval_fn=lambda: 0, eval_every=0)
    with pytest.raises(ValueError, match="number of steps"):
        T.run_loop(lambda i: {}, 0, progress=False)
    with pytest.raises(ValueError, match="show_every"):
        T.run_loop(lambda i: {}, 1, progress=False, show_every=0)


# ---------------------------------------------------------------- next-token training
@pytest.mark.parametrize("kw,match", [
    (dict(steps=0), "steps"), (dict(steps=2.5), "steps"), (dict(steps=True), "steps"),
    (dict(batch_size=0), "batch_size"), (dict(warmup=-1), "warmup"), (dict(lr=0.0), "lr"), (dict(lr=math.nan), "lr"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(grad_clip=-1.0), "grad_clip")])
def test_train_config_validates_its_fields(kw, match):
    with pytest.raises(ValueError, match=match):
        T.TrainConfig(**kw)


def test_train_is_deterministic_and_counts_tokens(tok):
    ex = [T.lm_example(tok, t) for t in TEXTS]
    cfg = T.TrainConfig(steps=4, batch_size=3, lr=1e-2, warmup=1, seed=3)
    a, b = tiny_gpt(tok), tiny_gpt(tok)
    seen = []
    ra = T.train(a, ex, cfg, pad_id=tok.pad_token_id, eval_fn=lambda m: seen.append(m) or 1, eval_every=2,
                 progress=False)
    rb = T.train(b, ex, cfg, pad_id=tok.pad_token_id, progress=False)
    assert ra.losses == rb.losses and len(ra.losses) == 4 and all(math.isfinite(x) for x in ra.losses)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    sampler = T.BatchSampler(len(ex), random.Random(3))  # tokens: the real (unpadded) tokens of each batch
    assert ra.tokens == sum(len(ex[i][0]) for _ in range(4) for i in sampler.next(3))
    assert ra.evals == [(2, 1), (4, 1)] and seen == [a, a] and ra.seconds > 0 and not a.training
    other = tiny_gpt(tok)
    assert T.train(other, ex, T.TrainConfig(steps=4, batch_size=3, lr=1e-2, warmup=1, seed=4), pad_id=tok.pad_token_id,
                   progress=False).losses != ra.losses  # the seed sets the batch order


def test_bad_training_inputs_are_refused(tok):
    model = tiny_gpt(tok)
    with pytest.raises(ValueError, match="no training examples"):
        T.train(model, [], progress=False)
    with pytest.raises(ValueError, match="pad_id"):
        T.train(model, [T.lm_example(tok, TEXTS[0])], T.TrainConfig(steps=1), pad_id=None, progress=False)
    with pytest.raises(ValueError, match="empty"):
        T.collate([], 0)
    with pytest.raises(ValueError, match="3 input ids but 2 labels"):
        T.collate([([1, 2, 3], [1, 2])], 0)
    with pytest.raises(ValueError, match="example 1 has no tokens"):
        T.collate([([1], [1]), ([], [])], 0)
    with pytest.raises(ValueError, match="no labelled tokens"):
        T.lm_loss(torch.zeros(1, 3, 5), torch.tensor([[4, T.IGNORE, T.IGNORE]]))
    with pytest.raises(ValueError, match=r"\(B, T, vocab\)"):
        T.lm_loss(torch.zeros(3, 5), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="string"):
        T.lm_example(tok, None)
    with pytest.raises(ValueError, match="no examples"):
        T.eval_loss(model, [])
    with pytest.raises(ValueError, match="batch_size"):
        T.eval_loss(model, [T.lm_example(tok, TEXTS[0])], batch_size=0)


def test_run_loop_leaves_one_truthful_line(capsys):
    """A live bar goes; one printed line stays in a saved notebook, with the steps and seconds it measured."""
    log = T.run_loop(lambda i: time.sleep(0.01) or {"loss": 1.0 / (i + 1)}, 5, desc="SFT", show=("loss",))
    out = capsys.readouterr().out.strip().splitlines()[-1]
    assert out == f"SFT: 5 steps in {log.seconds:.1f} s; last loss 0.200"
    T.run_loop(lambda i: {"x": 0.0}, 2, desc="PPO", unit="iterations", eval_fn=lambda: 1, eval_every=1)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PPO: 2 iterations in")
    T.run_loop(lambda i: {"x": 0.0}, 2, progress=False)
    assert capsys.readouterr().out == ""
