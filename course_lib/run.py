"""python -m course_lib.run [NOTEBOOK ...] [-p NAME VALUE ...]: build the course headless.

Executes the notebooks (default: all of notebooks/, in order) with papermill, writes the
executed copy and an HTML rendering of each into build/, and prints a table of notebook,
seconds, status and the metrics it recorded. Exits non-zero if any notebook fails,
showing the failing cell's error.

    python -m course_lib.run                      # the whole course
    python -m course_lib.run 01 -p seed 1         # notebook 01 with another seed
    python -m course_lib.run --update             # refresh the committed outputs in notebooks/
"""
import argparse
import ast
import json
import os
import re
import sys
import time
from pathlib import Path

import nbformat
import papermill as pm
from nbconvert import HTMLExporter

from . import report
from .exercises import STARS, registry
from .paths import BUILD_DIR, NOTEBOOKS_DIR, metrics_dir


def find_notebooks(names, folder=NOTEBOOKS_DIR):
    """Notebook paths for names given as paths, file names, stems or number prefixes ('01')."""
    every = sorted(p for p in Path(folder).glob("*.ipynb"))
    if not names:
        return every
    found = []
    for name in names:
        p = Path(name)
        if p.suffix == ".ipynb" and p.exists():
            found.append(p.resolve())
            continue
        matches = [q for q in every if q.stem == p.stem or q.stem.startswith(name)]
        if len(matches) != 1:
            choices = ", ".join(q.stem for q in every) or "(none)"
            what = "matches no notebook" if not matches else f"matches {len(matches)} notebooks"
            raise SystemExit(f"course_lib.run: {name!r} {what}; choose from: {choices}")
        found.append(matches[0])
    return found


def parse_value(text):
    """'3' -> 3, '0.1' -> 0.1, 'True' -> True, '[1, 2]' -> [1, 2], anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _error_summary(exc):
    """The failing cell's error, from a papermill execution error."""
    parts = [f"{getattr(exc, 'ename', type(exc).__name__)}: {getattr(exc, 'evalue', exc)}"]
    if getattr(exc, "exec_count", None) is not None:
        parts.insert(0, f"in cell [{exc.exec_count}]")
    tb = getattr(exc, "traceback", None)
    if tb:
        clean = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(tb))
        parts.append("\n".join(clean.splitlines()[-15:]))
    return "\n".join(parts)


def _is_progress_bar(output):
    """A tqdm widget saved into a notebook: it would show a stale "0%" to anyone reading the file."""
    data = output.get("data", {})
    text = "".join(data.get("text/plain", ""))
    return "application/vnd.jupyter.widget-view+json" in data and re.search(r"\d+%\|.*\|", text) is not None


def _strip_run_metadata(nb):
    """Drop papermill's per-run bookkeeping and saved progress bars, so committed notebooks change only with
    their content."""
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.get("outputs"):
            cell.outputs = [o for o in cell.outputs if not _is_progress_bar(o)]
    return nb


def write_html(ipynb_path, html_path):
    body, _ = HTMLExporter().from_notebook_node(nbformat.read(str(ipynb_path), as_version=4))
    Path(html_path).write_text(body, encoding="utf-8")


def run_notebook(path, parameters, out_dir, timeout=None):
    """Execute one notebook; return (seconds, status, error text or None)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / path.name
    t0 = time.perf_counter()
    error = None
    try:
        pm.execute_notebook(
            str(path), str(out), parameters=parameters, kernel_name="python3", cwd=str(path.parent),
            progress_bar=False, log_output=False, execution_timeout=timeout,
        )
        status = "ok"
    except Exception as exc:  # noqa: BLE001 - every failure is reported in the table
        status, error = "FAILED", _error_summary(exc)
    seconds = time.perf_counter() - t0
    if out.exists():
        try:
            write_html(out, out.with_suffix(".html"))
        except Exception as exc:  # noqa: BLE001
            print(f"course_lib.run: could not render {out.name} to HTML: {exc}", file=sys.stderr)
    return seconds, status, error


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, dict)):
        return f"<{type(value).__name__} of {len(value)}>"
    return str(value)


def format_table(rows):
    header = ("notebook", "seconds", "status", "metrics")
    lines = [(r["notebook"], f"{r['seconds']:.1f}", r["status"],
              ", ".join(f"{k}={_fmt(v)}" for k, v in r["metrics"].items())) for r in rows]
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(3)]
    out = []
    for row in [header, *lines]:
        out.append("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])
    return "\n".join(out)


def _update_summary(rows):
    path = metrics_dir() / "run_summary.json"
    summary = json.loads(path.read_text()) if path.exists() else {}
    for r in rows:
        summary[r["notebook"]] = {"seconds": round(r["seconds"], 2), "status": r["status"]}
    report._write_atomic(path, summary)


HEADLINE = [  # (notebook stem prefix, metric, what it says, format)
    ("01", "sdpa_max_abs_err", "attention from scratch vs torch SDPA, max abs error", "{:.1e}"),
    ("01", "unscaled_score_var", "variance of q·k at d_k = 64 without scaling (with: ~1)", "{:.1f}"),
    ("02", "kv_cache_speedup", "generation speed-up from the KV cache", "{:.1f}×"),
    ("02", "val_loss_mha", "validation loss, MHA (equal parameters)", "{:.3f}"),
    ("02", "val_loss_gqa", "validation loss, GQA", "{:.3f}"),
    ("02", "val_loss_mqa", "validation loss, MQA", "{:.3f}"),
    ("02", ("val_loss_gqa_minus_mha", "val_loss_gqa_minus_mha_ci95"), "GQA − MHA validation loss, paired over seeds [± 95% half-width]",
     "{:+.4f} ± {:.4f}"),
    ("02", ("val_loss_mqa_minus_mha", "val_loss_mqa_minus_mha_ci95"), "MQA − MHA validation loss, paired over seeds [± 95% half-width]",
     "{:+.4f} ± {:.4f}"),
    ("03", "flash_max_rel_err_fp32", "tiled FlashAttention vs SDPA, max relative error (fp32)", "{:.1e}"),
    ("03", "naive_peak_bytes_8k", "peak extra memory at T = 8k, standard attention (bytes)", "{:,.0f}"),
    ("03", "tiled_peak_bytes_8k", "peak extra memory at T = 8k, tiled (bytes)", "{:,.0f}"),
    ("03", "tiled_over_sdpa_time_4k", "tiled (pure PyTorch) / torch SDPA time at T = 4k", "{:.2f}×"),
    ("04", "base_gold_reward", "gold reward of the pretrained base model (max 1.75)", "{:.2f}"),
    ("05", "sft_gold_reward", "gold reward after SFT", "{:.2f}"),
    ("05", "sft_gold_reward_noisy_large", "gold after SFT on 10× more, 50% noisy demonstrations", "{:.2f}"),
    ("05", "sft_harmful_compliance_unseen", "harmful compliance after SFT, forbidden requests never seen in training [95% CI]",
     "{:.2f} [{:.2f}, {:.2f}]"),
    ("06", ("rm_heldout_accuracy", "rm_heldout_accuracy_ci"), "reward model test accuracy vs labels [95% CI over test prompts]",
     "{:.1%} [{:.1%}, {:.1%}]"),
    ("06", "annotator_agreement", "annotators' agreement with each other", "{:.1%}"),
    ("07", "ppo_gold_reward", "gold reward after PPO (β = 0.05)", "{:.2f}"),
    ("07", "ppo_minus_sft_gold_interval", "PPO − SFT gold reward, greedy [95% CI]", "{:+.3f} [{:+.3f}, {:+.3f}]"),
    ("07", "nokl_gold_reward", "gold reward after PPO without KL penalty (sampled)", "{:.2f}"),
    ("07", "nokl_proxy_reward", "... while its reward-model score rose to", "{:.2f}"),
    ("08", "dpo_gold_reward", "gold reward after DPO", "{:.2f}"),
    ("08", "dpo_over_ppo_time", "DPO / PPO wall-clock", "{:.2f}×"),
    ("09", ("cai_harmless_after", "cai_harmless_after_ci"),
     "harmlessness after RL-CAI (Bai et al.'s PM + PPO, the course's strong critic), safety split [95% CI]",
     "{:.2f} [{:.2f}, {:.2f}]"),
    ("09", "cai_overrefusal_after", "... while refusing this share of benign look-alikes", "{:.2f}"),
    ("09", "cai_gold_reward", "... and its gold reward", "{:.2f}"),
    ("09", "cai_sl_gold_reward", "gold reward after SL-CAI, the model RL-CAI started from", "{:.2f}"),
    ("10", "sft_gold_reward_mean", "test gold reward, SFT (mean of 5 seeds)", "{:.2f}"),
    ("10", "ppo_headroom_share", "share of SFT's headroom closed, RLHF with PPO (5 seeds, tuned) [95% CI]",
     "{:+.2f} [{:+.2f}, {:+.2f}]"),
    ("10", "dpo_headroom_share", "share of SFT's headroom closed, DPO (5 seeds, tuned) [95% CI]", "{:+.2f} [{:+.2f}, {:+.2f}]"),
    ("10", "cai_headroom_share", "share of SFT's headroom closed, RL-CAI (5 seeds, tuned) [95% CI]",
     "{:+.2f} [{:+.2f}, {:+.2f}]"),
    ("10", "win_rate_dpo_over_ppo", "head-to-head win rate, DPO over PPO [95% CI]", "{:.2f} [{:.2f}, {:.2f}]"),
    ("10", "dpo_over_ppo_time", "DPO / PPO cost after SFT, every phase counted [95% CI]", "{:.2f}× [{:.2f}, {:.2f}]"),
    ("11", "sft_trl_minus_course", "gold reward, TRL's SFTTrainer − the course's SFT, same recipe [95% CI]",
     "{:+.2f} [{:+.2f}, {:+.2f}]"),
    ("11", "dpo_trl_minus_course", "gold reward, TRL's DPOTrainer − the course's DPO, same recipe [95% CI]",
     "{:+.2f} [{:+.2f}, {:+.2f}]"),
    ("11", "online_trl_minus_course", "gold reward, TRL's GRPOTrainer − GRPO from scratch, same budget [95% CI]",
     "{:+.2f} [{:+.2f}, {:+.2f}]"),
]
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def headline_table(metrics_by_notebook, keep=None):
    """The README's results table, from recorded metrics ({notebook stem: {metric: value}}). keep: {prefix: the
    table's current lines} for notebooks with nothing recorded here, written back unchanged."""
    lines = ["| notebook | measurement | value |", "|---|---|---|"]
    keep = dict(keep or {})
    for prefix, names, label, fmt in HEADLINE:
        if prefix in keep:
            lines += keep.pop(prefix)
            continue
        for stem, values in sorted(metrics_by_notebook.items()):
            if not stem.startswith(prefix):
                continue
            flat = []   # one metric, or several (a value, its interval); each a number or a list of numbers
            for name in (names if isinstance(names, tuple) else (names,)):
                value = values.get(name)
                flat += value if isinstance(value, list) else [value]
            if flat and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
                lines.append(f"| {prefix} | {label} | {fmt.format(*flat)} |")
    return "\n".join(lines)


INSTRUCTORS_START, INSTRUCTORS_END = "<!-- instructors:start -->", "<!-- instructors:end -->"
READ_WORDS_PER_MINUTE = 150   # technical prose, read with care ...
READ_MINUTES_PER_CODE_CELL = 0.5  # ... plus half a minute for each code cell read


def reading_minutes(path):
    """Minutes to read a notebook: its prose at READ_WORDS_PER_MINUTE plus READ_MINUTES_PER_CODE_CELL a code cell."""
    nb = nbformat.read(str(path), as_version=4)
    words = sum(len(c.source.split()) for c in nb.cells if c.cell_type == "markdown")
    code = sum(c.cell_type == "code" for c in nb.cells)
    return words / READ_WORDS_PER_MINUTE + READ_MINUTES_PER_CODE_CELL * code


def _duration(seconds):
    return "–" if not isinstance(seconds, (int, float)) else f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def instructor_table(metrics_by_notebook, folder=NOTEBOOKS_DIR, keep=None):
    """Per notebook: minutes to read, the measured run time (default parameters), the exercises and their minutes.
    keep: {prefix: the table's current line} for notebooks with no run recorded here: their run time is kept."""
    reg = registry()
    lines = ["| # | notebook | read | run (measured) | exercises (★ count) | exercise time |", "|---|---|---|---|---|---|"]
    for path in find_notebooks([], folder):
        mine = [ex for ex in reg.values() if ex.notebook == path.stem]
        stars = ", ".join(f"{sum(ex.stars == s for ex in mine)} {STARS[s]}" for s in STARS)
        run = metrics_by_notebook.get(path.stem, {}).get("notebook_seconds")
        kept = (keep or {}).get(path.stem[:2])
        run_cell = kept[0].split("|")[4].strip() if run is None and kept else _duration(run)
        lines.append(f"| {path.stem[:2]} | {path.stem[3:].replace('_', ' ')} | {reading_minutes(path):.0f} min | "
                     f"{run_cell} | {len(mine)} ({stars}) | {sum(ex.minutes for ex in mine)} min |")
    return "\n".join(lines)


RUNTIME_START, RUNTIME_END = "<!-- runtime -->", "<!-- /runtime -->"


def stamp_runtime(nb, seconds, name="notebook"):
    """Write the measured run time between the runtime markers of the notebook's first cell (its header):
    the one place a notebook states how long it takes, refreshed by every `--update`."""
    head = nb.cells[0]
    if RUNTIME_START not in head.source or RUNTIME_END not in head.source:
        raise ValueError(f"{name}: its first cell needs '{RUNTIME_START}...{RUNTIME_END}' around the run time")
    if isinstance(seconds, (int, float)):
        before, rest = head.source.split(RUNTIME_START, 1)
        head.source = f"{before}{RUNTIME_START}about {_duration(seconds)}{RUNTIME_END}{rest.split(RUNTIME_END, 1)[1]}"
    return nb


def _fill(text, start, end, body, path):
    if start not in text or end not in text:
        raise ValueError(f"{path} has no {start} ... {end} section to fill")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def _rows_by_notebook(text, start, end, missing):
    """The lines of the table between start and end, grouped by their first cell, for the notebooks in `missing`."""
    if start not in text or end not in text:
        return {}
    body = text.split(start, 1)[1].split(end, 1)[0]
    rows = {}
    for line in body.strip().splitlines()[2:]:   # below the header and its rule
        rows.setdefault(line.split("|")[1].strip(), []).append(line)
    return {k: v for k, v in rows.items() if k in missing}


def update_readme(path, metrics_by_notebook):
    """Rewrite the README's results and instructors' tables between their markers; returns True if it changed.
    A notebook with no metrics recorded in this checkout (a fresh clone that has run only some) keeps its rows."""
    text = Path(path).read_text()
    missing = {stem[:2] for stem, values in metrics_by_notebook.items() if not values}
    keep = _rows_by_notebook(text, README_START, README_END, missing)
    new = _fill(text, README_START, README_END, headline_table(metrics_by_notebook, keep), path)
    if INSTRUCTORS_START in new:
        keep = _rows_by_notebook(new, INSTRUCTORS_START, INSTRUCTORS_END, missing)
        new = _fill(new, INSTRUCTORS_START, INSTRUCTORS_END, instructor_table(metrics_by_notebook, keep=keep), path)
    Path(path).write_text(new)
    return new != text


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m course_lib.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", help="notebooks to run (path, stem or number prefix); default: all")
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="set a notebook parameter (repeatable); VALUE is read as a Python literal if it is one")
    ap.add_argument("--out", type=Path, default=BUILD_DIR, help="where executed notebooks and HTML go (default build/)")
    ap.add_argument("--timeout", type=int, default=None, help="seconds allowed per cell (default: none)")
    ap.add_argument("--update", action="store_true",
                    help="also write each successfully executed notebook back to notebooks/ (refresh committed outputs)")
    args = ap.parse_args(argv)
    if args.update and args.parameter:
        ap.error("--update commits outputs made with the default parameters; drop -p")

    paths = find_notebooks(args.notebooks)
    parameters = {name: parse_value(value) for name, value in args.parameter}
    # a run with other parameters (the quick preset, another seed) records beside its outputs, never over the
    # course's recorded results, which the README and the notebooks' headers are written from
    os.environ.setdefault("COURSE_METRICS_DIR", str(args.out / "metrics" if parameters else metrics_dir()))
    rows = []
    for path in paths:
        print(f"running {path.name} ...", flush=True)
        seconds, status, error = run_notebook(path, parameters, args.out, args.timeout)
        if error:
            print(f"\n{path.name} FAILED {error}\n", file=sys.stderr, flush=True)
        elif args.update:
            nb = _strip_run_metadata(nbformat.read(str(args.out / path.name), as_version=4))
            stamp_runtime(nb, report.load(path.stem).get("notebook_seconds"), path.name)
            nbformat.write(nb, str(path))
        rows.append({"notebook": path.stem, "seconds": seconds, "status": status, "metrics": report.load(path.stem)})
    _update_summary(rows)
    if args.update:
        stems = [p.stem for p in find_notebooks([])]
        update_readme(NOTEBOOKS_DIR.parent / "README.md", {stem: report.load(stem) for stem in stems})
    print()
    print(format_table(rows))
    failed = [r["notebook"] for r in rows if r["status"] != "ok"]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} notebooks ran; outputs in {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
