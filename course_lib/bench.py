"""python -m course_lib.bench flash: time and peak memory of attention, measured on this machine.

A benchmark, not a test: its numbers depend on the machine and on what else runs on it.
Each size times the three implementations in turn, `repeats` rounds, and keeps each one's
best round (other work on the machine only ever adds time), so the ratios to SDPA
come from one run under the same conditions.

    python -m course_lib.bench flash                          # T = 1k, 2k, 4k, 8k; d = 64; one head
    python -m course_lib.bench flash --sizes 4096 --heads 8 --causal
    python -m course_lib.bench model                          # training tokens/s: course GPT vs GPT2LMHeadModel
"""
import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from . import checkpoints, training
from . import data as D
from .attention import scaled_dot_product_attention as naive_attention
from .flash import DEFAULT_BLOCK_K, DEFAULT_BLOCK_Q, flash_attention
from .kv_cache import human_bytes
from .memory import peak_memory
from .model import GPT, GPTConfig

def _check_positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


ATTENTION = {  # name -> f(q, k, v, is_causal=...)
    "naive": naive_attention,  # notebook 01's attention: materialises the T x T scores and weights
    "tiled": flash_attention,  # course_lib.flash, pure PyTorch, default blocks
    "sdpa": F.scaled_dot_product_attention,  # PyTorch's fused kernel
}


def flash_rows(sizes=(1024, 2048, 4096, 8192), batch=1, heads=1, d=64, repeats=5, is_causal=False,
               memory=True, seed=0):
    """One dict per sequence length T: best-of-`repeats` seconds of each implementation
    ('naive_s', 'tiled_s', 'sdpa_s'), their ratios to SDPA ('naive_over_sdpa', 'tiled_over_sdpa')
    and, if memory, the peak bytes each call allocates ('naive_peak_bytes', ...)."""
    sizes = list(sizes) if isinstance(sizes, (list, tuple, range)) else sizes
    if not isinstance(sizes, list) or not sizes:
        raise ValueError(f"sizes must be a non-empty list of sequence lengths such as [1024, 4096], got {sizes!r}")
    for T in sizes:
        _check_positive_int("every size T", T)
    for name, value in (("batch", batch), ("heads", heads), ("d", d), ("repeats", repeats)):
        _check_positive_int(name, value)
    if not isinstance(is_causal, bool):
        raise ValueError(f"is_causal must be True or False, got {is_causal!r}")
    g = torch.Generator().manual_seed(seed)
    rows = []
    for T in sizes:
        q, k, v = (torch.randn(batch, heads, T, d, generator=g) for _ in range(3))
        best = {}
        for name, f in ATTENTION.items():  # warm up (first calls allocate and pick kernels)
            f(q, k, v, is_causal=is_causal)
        for _ in range(repeats):
            for name, f in ATTENTION.items():
                t0 = time.perf_counter()
                f(q, k, v, is_causal=is_causal)
                best[name] = min(best.get(name, float("inf")), time.perf_counter() - t0)
        row = {"T": T, **{f"{name}_s": s for name, s in best.items()}}
        row["naive_over_sdpa"] = best["naive"] / best["sdpa"]
        row["tiled_over_sdpa"] = best["tiled"] / best["sdpa"]
        if memory:
            for name, f in ATTENTION.items():
                row[f"{name}_peak_bytes"] = peak_memory(f, q, k, v, is_causal=is_causal)[1]
        rows.append(row)
    return rows


def format_flash_rows(rows):
    """The rows of `flash_rows` as a text table (times in ms, peaks in binary units)."""
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"rows must be the non-empty list of dicts that flash_rows returns, got {rows!r}")
    head = f"{'T':>6} | {'naive ms':>9} {'tiled ms':>9} {'SDPA ms':>9} | {'naive/SDPA':>10} {'tiled/SDPA':>10}"
    if "naive_peak_bytes" in rows[0]:
        head += f" | {'peak naive':>11} {'peak tiled':>11} {'peak SDPA':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        line = (f"{r['T']:>6} | {1e3 * r['naive_s']:9.1f} {1e3 * r['tiled_s']:9.1f} {1e3 * r['sdpa_s']:9.1f} | "
                f"{r['naive_over_sdpa']:10.2f} {r['tiled_over_sdpa']:10.2f}")
        if "naive_peak_bytes" in r:
            line += " | " + " ".join(f"{human_bytes(r[f'{n}_peak_bytes']):>11}" for n in ATTENTION)
        lines.append(line)
    return "\n".join(lines)


def model_rows(steps=20, repeats=3, batch_size=32, seed=0):
    """Training throughput (non-padding tokens per second) of the course's GPT and of
    transformers' GPT2LMHeadModel of the same size, on the same pretraining batches; the rounds
    alternate between the two and each keeps its best round."""
    for name, value in (("steps", steps), ("repeats", repeats), ("batch_size", batch_size)):
        _check_positive_int(name, value)
    BASE_CONFIG = checkpoints.BASE_CONFIG
    collate, lm_example, lm_loss = training.collate, training.lm_example, training.lm_loss
    tok = D.load_tokenizer()
    corpus = D.read_jsonl(D.DATA_DIR / "pretrain.jsonl")
    if len(corpus) < steps * batch_size:
        raise ValueError(f"steps={steps} x batch_size={batch_size} needs {steps * batch_size} documents but the "
                         f"pretraining corpus has {len(corpus)}; use steps <= {len(corpus) // batch_size}")
    texts = [r["text"] for r in corpus[: steps * batch_size]]
    batches = [collate([lm_example(tok, t) for t in texts[i:i + batch_size]], tok.pad_token_id)
               for i in range(0, len(texts), batch_size)]
    torch.manual_seed(seed)
    models = {
        "course GPT": GPT(GPTConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, **BASE_CONFIG)),
        "GPT2LMHeadModel": GPT2LMHeadModel(GPT2Config(
            vocab_size=len(tok), n_positions=BASE_CONFIG["n_positions"], n_embd=BASE_CONFIG["n_embd"],
            n_layer=BASE_CONFIG["n_layer"], n_head=BASE_CONFIG["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0)),
    }
    best = {name: float("inf") for name in models}
    tokens = sum(int(m.sum()) for _, _, m in batches)
    for _ in range(repeats):
        for name, model in models.items():
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
            model.train()
            t0 = time.perf_counter()
            for ids, labels, mask in batches:
                loss = lm_loss(model(ids, attention_mask=mask).logits, labels)
                opt.zero_grad()
                loss.backward()
                opt.step()
            best[name] = min(best[name], time.perf_counter() - t0)
    return [{"model": name, "parameters": sum(p.numel() for p in m.parameters()), "seconds": best[name],
             "tokens_per_s": tokens / best[name]} for name, m in models.items()]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m course_lib.bench", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="benchmark", required=True)
    fl = sub.add_parser("flash", help="naive vs tiled (course_lib.flash) vs torch SDPA: time and peak memory")
    fl.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192], help="sequence lengths T")
    fl.add_argument("--batch", type=int, default=1)
    fl.add_argument("--heads", type=int, default=1)
    fl.add_argument("--dim", type=int, default=64, help="head dimension d")
    fl.add_argument("--repeats", type=int, default=5, help="timed rounds per size (the best one counts)")
    fl.add_argument("--causal", action="store_true")
    fl.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    fl.add_argument("--json", type=str, default=None, help="also write the rows to this JSON file")
    mo = sub.add_parser("model", help="training tokens/s: the course's GPT vs transformers' GPT2LMHeadModel")
    mo.add_argument("--steps", type=int, default=20, help="training steps of 32 documents per round")
    mo.add_argument("--repeats", type=int, default=3, help="rounds per model (the best one counts)")
    args = ap.parse_args(argv)

    if args.benchmark == "model":
        rows = model_rows(args.steps, args.repeats)
        for r in rows:
            print(f"{r['model']:16s} {r['parameters']:>9,} parameters  {r['tokens_per_s']:8.0f} tokens/s")
        ratio = rows[0]["tokens_per_s"] / rows[1]["tokens_per_s"]
        print(f"\ncourse GPT / GPT2LMHeadModel: {ratio:.2f}x (target: >= 1.0x) -> {'met' if ratio >= 1 else 'NOT met'}")
        return 0

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; q, k, v of shape "
          f"({args.batch}, {args.heads}, T, {args.dim}) float32, causal={args.causal}; "
          f"tiled blocks {DEFAULT_BLOCK_Q} x {DEFAULT_BLOCK_K}; best of {args.repeats}", flush=True)
    rows = flash_rows(args.sizes, args.batch, args.heads, args.dim, args.repeats, args.causal,
                      memory=not args.no_memory)
    print(format_flash_rows(rows))
    at_4k = [r for r in rows if r["T"] == 4096]
    if at_4k:
        ratio = at_4k[0]["tiled_over_sdpa"]
        print(f"\ntiled / SDPA at T=4096: {ratio:.2f}x (target: within 3x) -> {'met' if ratio <= 3 else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
