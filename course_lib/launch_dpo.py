"""The course's DPO step as a script that accelerate launches once per process: data parallel, shown running.

Taught in the README's "Scaling up" section; tests/test_launch_dpo.py runs it on 2 CPU processes and on 1 and
checks that they agree. The step is `dpo.train_dpo`'s (notebook 08): the SFT model as policy, a frozen copy as the
reference, `dpo.pair_logprobs` and `dpo.dpo_loss`, AdamW with warm-up (`training.adamw`), the gradient norm clipped.
The engine is accelerate's, and the course adds nothing to it: `Accelerator.prepare` wraps the policy (DDP, or FSDP)
and its optimizer, `accelerator.backward` averages the gradients over the processes, `split_between_processes`
hands each process its share of the global batch, and `accelerator.gather` collects the per-pair losses to report.

The global batch is fixed (--batch-size, all processes together) and drawn in the course's deterministic order
(`training.BatchSampler`, seeded), so N processes see the same pairs per step as one, and since the loss is a mean
over equal shares, the same averaged gradient: the same run, up to float rounding.

    python -m course_lib.launch_dpo --steps 3 --out build/launch_dpo                           # one process
    accelerate launch --config_file course_lib/accelerate_configs/cpu_2proc.yaml \\
        -m course_lib.launch_dpo --cpu --steps 3 --out build/launch_dpo                        # 2 CPU processes (CI)
    accelerate launch --config_file course_lib/accelerate_configs/one_gpu.yaml -m course_lib.launch_dpo
    accelerate launch --config_file course_lib/accelerate_configs/multi_gpu_ddp.yaml -m course_lib.launch_dpo
    accelerate launch --config_file course_lib/accelerate_configs/fsdp.yaml -m course_lib.launch_dpo

Each process writes OUT/rank{R}.json (its per-step losses, its pairs, a checksum of the final parameters);
the main process prints one summary line.
"""
import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.hooks import AlignDevicesHook, add_hook_to_module

from . import checkpoints, dpo
from .training import BatchSampler, adamw


def parse_args(argv=None):
    d = dpo.DPOConfig()
    p = argparse.ArgumentParser(prog="python -m course_lib.launch_dpo", description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=d.steps, help=f"AdamW steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"pairs per step, all processes together: a multiple of the number of processes (default {d.batch_size}, "
                   "notebook 08's)")
    p.add_argument("--beta", type=float, default=d.beta, help=f"DPO's beta (default {d.beta})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate after warm-up (default {d.lr})")
    p.add_argument("--seed", type=int, default=d.seed, help="the batch order's seed (default 0)")
    p.add_argument("--out", type=Path, default=None, help="folder for rank{R}.json (default: write nothing)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where CUDA is available "
                   "(implied where it is not)")
    args = p.parse_args(argv)
    try:  # the course's own checks and messages for every setting
        cfg = dpo.DPOConfig(beta=args.beta, steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    except ValueError as e:
        p.error(str(e).replace("batch_size", "--batch-size").replace("steps must", "--steps must"))
    return p, args, cfg


def checksum(model):
    """(sum of every parameter in float64, largest |parameter|): equal on every process if the replicas agree."""
    total, biggest = 0.0, 0.0
    for p in model.parameters():
        t = p.detach()
        t = t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP2 shards a parameter as a DTensor
        total += t.double().sum().item()
        biggest = max(biggest, t.abs().max().item())
    return total, biggest


def main(argv=None):
    parser, args, cfg = parse_args(argv)
    # split_batches: the batch size is global, so the prepared schedule steps once a step, not once per process
    accelerator = Accelerator(cpu=args.cpu or not torch.cuda.is_available(),
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    n, rank = accelerator.num_processes, accelerator.process_index
    if cfg.batch_size % n:
        parser.error(f"--batch-size {cfg.batch_size} does not split evenly over {n} processes: "
                     f"use a multiple of {n} (e.g. {n * max(1, cfg.batch_size // n)})")
    with accelerator.main_process_first():  # the first process builds any missing artefact; the others load it
        tok = checkpoints.tokenizer()
        pairs = checkpoints.get("preferences", progress=False)["train"]
        policy, ref = checkpoints.get("sft", progress=False), checkpoints.get("sft", progress=False)
    ref.requires_grad_(False).eval().to(accelerator.device)

    sampler = BatchSampler(len(pairs), random.Random(cfg.seed))  # the global batch order, as in dpo.train_dpo
    torch.manual_seed(cfg.seed)
    opt, sched = adamw(policy.parameters(), cfg.lr, cfg.weight_decay, cfg.warmup)
    policy, opt, sched = accelerator.prepare(policy, opt, sched)
    for model in (policy, ref):  # the course's batches are built on the CPU: move them in, and the logits back out
        add_hook_to_module(model, AlignDevicesHook(execution_device=accelerator.device, io_same_device=True))

    losses, local_losses, shares, t0 = [], [], [], time.perf_counter()
    for _ in range(cfg.steps):
        with accelerator.split_between_processes(sampler.next(cfg.batch_size)) as idx:
            batch = [pairs[i] for i in idx]
        policy.eval()  # dropout off, as in dpo.train_dpo; gradients still flow
        pc, pr = dpo.pair_logprobs(policy, tok, batch)
        with torch.no_grad():
            rc, rr = dpo.pair_logprobs(ref, tok, batch)
        per_pair, _, _ = dpo.dpo_loss(pc, pr, rc, rr, cfg.beta, cfg.label_smoothing)
        loss = per_pair.mean()
        opt.zero_grad(set_to_none=True)
        accelerator.backward(loss)  # DDP/FSDP average the gradients over the processes here
        if cfg.grad_clip:
            accelerator.clip_grad_norm_(policy.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        losses.append(accelerator.gather(per_pair.detach().to(accelerator.device)).mean().item())  # the global batch's loss
        # (.to: the hook hands logits back on the CPU, and NCCL gathers only GPU tensors)
        local_losses.append(loss.item())
        shares.append(list(idx))
    seconds = time.perf_counter() - t0
    total, biggest = checksum(policy)

    record = {"rank": rank, "num_processes": n, "distributed_type": str(accelerator.distributed_type).split(".")[-1],
              "device": str(accelerator.device), "batch_size": cfg.batch_size, "steps": cfg.steps, "beta": cfg.beta,
              "lr": cfg.lr, "seed": cfg.seed, "losses": losses, "local_losses": local_losses, "pairs": shares,
              "param_sum": total, "param_max_abs": biggest, "seconds": seconds}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"rank{rank}.json").write_text(json.dumps(record, indent=1))
    accelerator.wait_for_everyone()
    accelerator.print(f"launch_dpo: {n} process{'es' if n > 1 else ''} ({record['distributed_type']}, "
                      f"{record['device']}), {cfg.steps} steps of {cfg.batch_size} pairs ({cfg.batch_size // n} per "
                      f"process) in {seconds:.1f} s; loss {losses[0]:.4f} -> {losses[-1]:.4f}; "
                      f"parameter sum {total:.6f}, max |p| {biggest:.6f}", flush=True)
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
