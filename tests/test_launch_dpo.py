"""course_lib.launch_dpo under accelerate: two CPU processes agree with each other, with one process, and with the
course's own dpo.train_dpo; the accelerate configs load with accelerate's own loader; bad arguments say what to fix.

accelerate is imported at the top: without it this file fails, it is not skipped."""
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import FullyShardedDataParallelPlugin, patch_environment
from accelerate.utils.dataclasses import get_module_class_from_name
from accelerate.utils.launch import prepare_multi_gpu_env

import browser
from course_lib import checkpoints, dpo, launch_dpo
from course_lib.training import BatchSampler

CONFIGS = Path(launch_dpo.__file__).parent / "accelerate_configs"
ARGS = ["--steps", "3", "--batch-size", "16", "--lr", "1e-3", "--cpu"]  # lr 1e-3: the loss moves visibly in 3 steps
REL = 1e-5  # 2 processes vs 1: the same pairs and gradients, only float rounding differs (padding to shorter rows)


def _env():
    # Everything on loopback: torchrun's rendezvous address, and gloo's own sockets (accelerate's debug_launcher pins
    # GLOO_SOCKET_IFNAME=lo too: gloo's hostname-based choice of interface is unreliable on CI runners).
    return {**os.environ, "HF_HUB_OFFLINE": "1", "MASTER_ADDR": "127.0.0.1", "GLOO_SOCKET_IFNAME": "lo"}


def _accelerate_launch(config, *args, timeout=120):
    cmd = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", str(CONFIGS / config),
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(browser.free_port()),
           "-m", "course_lib.launch_dpo", *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=timeout)


def _python(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "course_lib.launch_dpo", *args], env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _records(folder, n):
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(n)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{"two": [rank0, rank1], "one": [rank0]}: the same DPO run on 2 CPU processes and on 1."""
    checkpoints.get("sft", progress=False), checkpoints.get("preferences", progress=False)  # built once, up front
    out = {}
    for name, n in (("two", 2), ("one", 1)):
        folder = tmp_path_factory.mktemp(name)
        args = [*ARGS, "--out", str(folder)]
        res = _accelerate_launch("cpu_2proc.yaml", *args) if n == 2 else _python(*args)
        if n == 2 and res.returncode and "address already in use" in (res.stdout + res.stderr).lower():
            res = _accelerate_launch("cpu_2proc.yaml", *args)  # the free port was taken in between: once more
        said = f"{name} run, exit status {res.returncode}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        assert res.returncode == 0, said
        # the summary line, printed once, by the main process
        assert f"launch_dpo: {n} process" in res.stdout and res.stdout.count("launch_dpo:") == 1, said
        out[name] = _records(folder, n)
    return out


def _disagreements(ranks, single):
    """What is wrong with a multi-process run (its ranks' records) against a one-process run: [] if nothing."""
    bad = []
    first = ranks[0]
    for r in ranks[1:]:
        for key in ("losses", "param_sum", "param_max_abs"):
            if r[key] != first[key]:
                bad.append(f"rank {r['rank']}'s {key} {r[key]} != rank 0's {first[key]}")
    if not all(math.isfinite(x) for x in first["losses"]):
        bad.append(f"a loss is not finite: {first['losses']}")
    for s, (a, b) in enumerate(zip(first["losses"], single["losses"])):
        if abs(a - b) > REL * abs(b):
            bad.append(f"step {s + 1}: loss {a} on {len(ranks)} processes vs {b} on one")
    for key in ("param_sum", "param_max_abs"):
        if abs(first[key] - single[key]) > REL * abs(single[key]):
            bad.append(f"{key} {first[key]} on {len(ranks)} processes vs {single[key]} on one")
    return bad


def test_two_cpu_processes_really_ran_in_parallel(runs):
    """Two ranks joined one process group (accelerate reports MULTI_CPU over gloo), each took its own half of every
    global batch, and the halves are the one-process run's batch: agreement below is not two independent copies."""
    two, (one,) = runs["two"], runs["one"]
    assert [r["rank"] for r in two] == [0, 1]
    assert all(r["num_processes"] == 2 and r["distributed_type"] == "MULTI_CPU" for r in two)
    assert one["num_processes"] == 1 and one["distributed_type"] == "NO"
    for step, (a, b, whole) in enumerate(zip(two[0]["pairs"], two[1]["pairs"], one["pairs"])):
        assert len(a) == len(b) == 8 and a + b == whole, f"step {step + 1}: the shares are not the global batch"
    # each rank's loss is over its own half; the logged loss is the whole batch's, gathered from both
    later = [(x, y, z) for x, y, z in zip(two[0]["local_losses"], two[1]["local_losses"], two[0]["losses"])][1:]
    assert all(x != y for x, y, _ in later)
    assert all(abs((x + y) / 2 - z) < 1e-6 for x, y, z in later)


def test_two_processes_agree_with_each_other_and_with_one(runs):
    two, (one,) = runs["two"], runs["one"]
    assert _disagreements(two, one) == []
    assert abs(two[0]["losses"][-1] - math.log(2)) > 1e-3  # the loss moved from ln 2: there was training to agree on
    worst = max(abs(a - b) / abs(b) for a, b in zip(two[0]["losses"], one["losses"]))
    print(f"2 vs 1 process: largest relative loss difference {worst:.1e}, parameter sums "
          f"{two[0]['param_sum']!r} vs {one['param_sum']!r}")


def test_the_agreement_check_catches_a_disagreement(runs):
    two, (one,) = runs["two"], runs["one"]
    off = [dict(r) for r in two]
    off[1]["param_sum"] += 1e-9 * abs(off[1]["param_sum"])  # one rank's replica drifted, by rounding-sized amounts
    assert any("rank 1's param_sum" in m for m in _disagreements(off, one))
    shifted = [{**r, "losses": [x * (1 + 1e-4) for x in r["losses"]]} for r in two]  # both ranks, off the 1-process run
    assert any("step 1: loss" in m for m in _disagreements(shifted, one))
    nan = [{**r, "losses": [float("nan")] * 3} for r in two]
    assert any("not finite" in m for m in _disagreements(nan, one))


def test_one_process_is_the_course_train_dpo(runs):
    """The script's step is dpo.train_dpo's: the same losses and final parameters, and at step 1 (policy ==
    reference) the loss dpo.dpo_loss gives directly on the first global batch, ln 2."""
    (one,) = runs["one"]
    tok, pairs = checkpoints.tokenizer(), checkpoints.get("preferences", progress=False)["train"]
    policy, ref = checkpoints.get("sft", progress=False), checkpoints.get("sft", progress=False)
    idx = BatchSampler(len(pairs), random.Random(0)).next(16)  # dpo.train_dpo's first global batch
    assert idx == one["pairs"][0]
    first = [pairs[i] for i in idx]
    with torch.no_grad():
        direct = dpo.dpo_loss(*dpo.pair_logprobs(policy, tok, first), *dpo.pair_logprobs(ref, tok, first), 0.1)[0]
    assert one["losses"][0] == pytest.approx(direct.mean().item(), rel=1e-7) == pytest.approx(math.log(2), rel=1e-6)
    cfg = dpo.DPOConfig(steps=3, batch_size=16, lr=1e-3, seed=0)
    log = dpo.train_dpo(policy, tok, pairs, cfg, ref_model=ref.requires_grad_(False), progress=False)
    assert one["losses"] == pytest.approx(log.losses, rel=1e-6)
    total, biggest = launch_dpo.checksum(policy)
    assert (one["param_sum"], one["param_max_abs"]) == pytest.approx((total, biggest), rel=1e-9)


# ---------------------------------------------------------------- the configs
def test_each_config_loads_with_accelerates_loader_and_has_the_readme_fields():
    cfg = {p.name: load_config_from_file(str(p)) for p in sorted(CONFIGS.glob("*.yaml"))}
    assert set(cfg) == {"cpu_2proc.yaml", "one_gpu.yaml", "multi_gpu_ddp.yaml", "fsdp.yaml"}
    kinds = {name: (str(c.distributed_type).split(".")[-1], c.num_processes) for name, c in cfg.items()}
    assert kinds == {"cpu_2proc.yaml": ("MULTI_GPU", 2), "one_gpu.yaml": ("NO", 1),
                     "multi_gpu_ddp.yaml": ("MULTI_GPU", 8), "fsdp.yaml": ("FSDP", 8)}
    assert cfg["cpu_2proc.yaml"].main_process_ip == "127.0.0.1"
    assert all(c.mixed_precision == "no" and c.num_machines == 1 for c in cfg.values())
    assert cfg["fsdp.yaml"].fsdp_config == {
        "fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_transformer_layer_cls_to_wrap": "Block",
        "fsdp_reshard_after_forward": True, "fsdp_state_dict_type": "SHARDED_STATE_DICT", "fsdp_offload_params": False,
        "fsdp_cpu_ram_efficient_loading": False, "fsdp_activation_checkpointing": False}


def test_the_fsdp_config_reaches_accelerates_fsdp_plugin():
    """Through accelerate's own launcher code (no GPU needed): the yaml's keys become the FSDP plugin's settings, and
    the layer class it wraps is the course model's transformer block."""
    parser = launch_command_parser()
    known = {a.dest for a in parser._actions}
    assert set(load_config_from_file(str(CONFIGS / "fsdp.yaml")).fsdp_config) <= known  # no misspelt key
    args = parser.parse_args(["--config_file", str(CONFIGS / "fsdp.yaml"), "-m", "course_lib.launch_dpo"])
    args, _, _ = _validate_launch_command(args)
    assert args.use_fsdp and args.num_processes == 8
    env = prepare_multi_gpu_env(args)
    with patch_environment(**{k: v for k, v in env.items() if k.startswith(("FSDP_", "ACCELERATE_USE_FSDP"))}):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.transformer_cls_names_to_wrap == ["Block"] and not plugin.cpu_ram_efficient_loading
    assert get_module_class_from_name(checkpoints.get("sft", progress=False), "Block") is not None


# ---------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["--beta", "-1"], "beta must be a finite number > 0"),
    (["--lr", "0"], "lr must be > 0, got 0.0"),
    (["--steps", "two"], "argument --steps: invalid int value: 'two'"),
])
def test_a_bad_argument_says_what_to_fix(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        launch_dpo.parse_args(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_the_command_exits_non_zero_on_a_bad_argument():
    res = _python("--steps", "0")
    assert res.returncode == 2 and "error: --steps must be an integer >= 1, got 0" in res.stderr, res.stderr[-2000:]


def test_a_global_batch_that_does_not_split_over_the_processes_says_so():
    res = _accelerate_launch("cpu_2proc.yaml", "--cpu", "--steps", "1", "--batch-size", "15")
    assert res.returncode != 0
    assert "--batch-size 15 does not split evenly over 2 processes: use a multiple of 2 (e.g. 14)" in res.stderr, \
        res.stderr[-3000:]
