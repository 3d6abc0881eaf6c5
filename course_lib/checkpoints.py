"""Artefacts by name: trained deterministically when missing, cached, loaded with safetensors.

    from course_lib import checkpoints
    tok = checkpoints.tokenizer()
    base = checkpoints.get("base")        # pretrains it (about a minute) the first time
    sft = checkpoints.get("sft")          # fine-tunes "base" the first time

Each artefact lives in ``<cache>/checkpoints/<name>-<fingerprint>/``; the fingerprint hashes the
recipe and the data it reads, so a changed recipe or data set is rebuilt, never silently reused.
Writes are atomic (a temporary folder renamed into place); an entry that is partial or does not
load is deleted and rebuilt. Weights are safetensors, never pickle.
"""
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from . import data as D
from .paths import CACHE_DIR, DATA_DIR

BASE_CONFIG = {"n_positions": 96, "n_embd": 128, "n_layer": 4, "n_head": 4}
RECIPES = {
    "base": {"kind": "pretrain", "config": BASE_CONFIG, "steps": 900, "batch_size": 32, "lr": 2e-3, "seed": 0,
             "data": ["pretrain.jsonl"]},
    "sft": {"kind": "sft", "from": "base", "steps": 150, "batch_size": 32, "lr": 5e-4, "seed": 0,
            "data": ["sft.jsonl"]},
    # K responses sampled from the SFT model per training prompt, ranked by the simulated annotators
    "preferences": {"kind": "preferences", "from": "sft", "n_prompts": 1200, "k": 4, "temperature": 1.0,
                    "seed": 0, "val_fraction": 0.15, "data": ["prompts.jsonl"]},
    # the SFT trunk (frozen) + a scalar head, Bradley-Terry on the preferences; best epoch on held-out pairs
    "reward_model": {"kind": "reward_model", "from": "preferences", "epochs": 20, "lr": 1e-3, "seed": 0},
    # RLHF: PPO from the SFT model against the reward model, KL penalty beta
    "ppo": {"kind": "ppo", "from": "reward_model", "beta": 0.05, "iterations": 30, "lr": 1e-4, "batch_size": 64,
            "seed": 0, "data": ["prompts.jsonl"]},
}
_BUILDERS = {}
META = "meta.json"


def register(name, recipe, builder):
    """Add an artefact: builder(recipe, out_dir) writes it into out_dir and returns its metadata dict."""
    RECIPES[name] = recipe
    _BUILDERS[recipe["kind"]] = builder


def root():
    return Path(os.environ.get("COURSE_CACHE_DIR", CACHE_DIR)) / "checkpoints"


def _file_digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fingerprint(name):
    """Hash of the recipe, the data files it reads, the tokenizer and the recipes it builds on."""
    if name not in RECIPES:
        raise ValueError(f"unknown artefact {name!r}; known: {sorted(RECIPES)}")
    recipe = RECIPES[name]
    h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    for f in recipe.get("data", []):
        h.update(_file_digest(DATA_DIR / f).encode())
    h.update(_file_digest(DATA_DIR / "tokenizer" / "tokenizer.json").encode())
    if "from" in recipe:
        h.update(fingerprint(recipe["from"]).encode())
    return h.hexdigest()[:12]


def path(name):
    return root() / f"{name}-{fingerprint(name)}"


def tokenizer():
    """The course's tokenizer (shipped with the data)."""
    return D.load_tokenizer()


def _load_model(folder):
    from transformers import AutoModelForCausalLM

    from . import model as _  # noqa: F401  registers the course's GPT with AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True).eval()


def _load(name, folder):
    return _LOADERS[RECIPES[name]["kind"]](folder)


def _valid(name, folder):
    try:
        meta = json.loads((folder / META).read_text())
        _load(name, folder)
        return meta.get("complete") is True
    except Exception:  # noqa: BLE001 - anything unreadable is rebuilt
        return False


def build(name, progress=True):
    """Train artefact `name` now and cache it atomically; returns its folder."""
    recipe = RECIPES[name]
    builder = _BUILDERS.get(recipe["kind"])
    if builder is None:
        raise ValueError(f"no builder for artefact {name!r} (kind {recipe['kind']!r})")
    target = path(name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        t0 = time.perf_counter()
        meta = builder(recipe, tmp, progress=progress)
        meta.update({"name": name, "recipe": recipe, "fingerprint": fingerprint(name),
                     "build_seconds": time.perf_counter() - t0, "complete": True})
        (tmp / META).write_text(json.dumps(meta, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure(name, progress=True):
    """The folder of artefact `name`, building it (and what it builds on) if missing or corrupt."""
    if name not in RECIPES:
        raise ValueError(f"unknown artefact {name!r}; known: {sorted(RECIPES)}")
    folder = path(name)
    if folder.exists() and _valid(name, folder):
        return folder
    if folder.exists():
        shutil.rmtree(folder)  # partial or corrupt: rebuild
    if "from" in RECIPES[name]:
        ensure(RECIPES[name]["from"], progress)
    return build(name, progress)


def get(name, progress=True):
    """Artefact `name`, built and cached first if needed: a model (eval mode), a reward model, or
    for "preferences" a dict {"train": rows, "val": rows}."""
    return _load(name, ensure(name, progress))


def info(name, progress=True):
    """The metadata an artefact was saved with (recipe, losses, seconds, ...)."""
    return json.loads((ensure(name, progress) / META).read_text())


def load_model(name_or_path, progress=True):
    """A course artefact by name, or any local Hugging Face causal LM directory by path."""
    if name_or_path in RECIPES:
        return get(name_or_path, progress)
    folder = Path(name_or_path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{name_or_path!r} is neither a course artefact ({sorted(RECIPES)}) "
                                "nor a local model directory (one with config.json and weights)")
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} has no config.json; save the model with save_pretrained() first")
    return _load_model(folder)


def load_tokenizer(name_or_path):
    """The tokenizer for a model: its own if the directory has one, else the course's."""
    folder = Path(name_or_path)
    if folder.is_dir() and (folder / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder))
    return tokenizer()


# ---------------------------------------------------------------- builders
def _pretrain(recipe, out, progress=True):
    from .model import GPT, GPTConfig
    from .training import lm_example, train

    tok = tokenizer()
    torch.manual_seed(recipe["seed"])
    cfg = GPTConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                    **recipe["config"])
    model = GPT(cfg)
    rows = [r for f in recipe["data"] for r in D.read_jsonl(DATA_DIR / f)][:recipe.get("limit")]
    examples = [lm_example(tok, r["text"]) for r in rows]
    log = train(model, examples, steps=recipe["steps"], batch_size=recipe["batch_size"], lr=recipe["lr"],
                seed=recipe["seed"], pad_id=tok.pad_token_id, progress=progress, desc="pretraining")
    model.save_pretrained(str(out))
    return {"losses": log["losses"], "train_seconds": log["seconds"], "tokens": log["tokens"],
            "parameters": sum(p.numel() for p in model.parameters())}


def _sft(recipe, out, progress=True):
    from .sft import train_sft

    tok = tokenizer()
    model = get(recipe["from"], progress)
    rows = [r for f in recipe["data"] for r in D.read_jsonl(DATA_DIR / f)]
    log = train_sft(model, tok, rows, steps=recipe["steps"], batch_size=recipe["batch_size"], lr=recipe["lr"],
                    seed=recipe["seed"], progress=progress)
    model.save_pretrained(str(out))
    return {"losses": log["losses"], "train_seconds": log["seconds"], "tokens": log["tokens"]}


def _preferences(recipe, out, progress=True):
    import random

    from . import metrics
    from .preferences import collect

    tok = tokenizer()
    policy = get(recipe["from"], progress)
    pool = [r["prompt"] for f in recipe["data"] for r in D.read_jsonl(DATA_DIR / f)]
    prompts = random.Random(recipe["seed"]).sample(pool, recipe["n_prompts"])
    samples = [metrics.respond(policy, tok, prompts, temperature=recipe["temperature"], seed=recipe["seed"] + s)
               for s in range(recipe["k"])]
    rows = collect(prompts, [list(rs) for rs in zip(*samples)], seed=recipe["seed"])
    n_val = int(recipe["val_fraction"] * recipe["n_prompts"])
    for r in rows:  # hold out whole prompts (groups), so no prompt is in both splits
        r["split"] = "val" if r["group"] >= recipe["n_prompts"] - n_val else "train"
    (out / "preferences.jsonl").write_text(D._dumps(rows))
    return {"pairs": len(rows), "prompts": len(prompts), "responses_sampled": len(prompts) * recipe["k"]}


def _load_preferences(folder):
    rows = D.read_jsonl(folder / "preferences.jsonl", schema={"prompt": str, "chosen": str, "rejected": str,
                                                                "split": str})
    return {"train": [r for r in rows if r["split"] == "train"], "val": [r for r in rows if r["split"] == "val"]}


def _reward_model(recipe, out, progress=True):
    from . import reward_model as R

    prefs = get(recipe["from"], progress)
    trunk = get(RECIPES[recipe["from"]]["from"], progress)
    rm = R.RewardModel(trunk, tokenizer())
    log = R.train_reward_model(rm, prefs["train"], prefs["val"], epochs=recipe["epochs"], lr=recipe["lr"],
                               seed=recipe["seed"])
    R.save(rm, out)
    return {"val_acc": log["val_acc"], "train_acc": log["train_acc"], "best_epoch": log["best_epoch"],
            "losses": log["losses"], "train_seconds": log["seconds"]}


def _ppo(recipe, out, progress=True):
    from . import ppo

    tok = tokenizer()
    rm = get(recipe["from"], progress)
    sft_name = RECIPES[RECIPES[recipe["from"]]["from"]]["from"]
    policy, ref = get(sft_name, progress), get(sft_name, progress)
    prompts = [r["prompt"] for f in recipe["data"] for r in D.read_jsonl(DATA_DIR / f)]
    cfg = ppo.PPOConfig(iterations=recipe["iterations"], beta=recipe["beta"], lr=recipe["lr"],
                        batch_size=recipe["batch_size"], seed=recipe["seed"])
    log = ppo.train_ppo(policy, ref, rm.score, ppo.value_model_from(rm), tok, prompts, cfg, progress=progress)
    policy.save_pretrained(str(out))
    return {k: log[k] for k in ("proxy", "gold", "kl", "length")} | {"train_seconds": log["seconds"]}


_BUILDERS.update({"pretrain": _pretrain, "sft": _sft, "preferences": _preferences, "reward_model": _reward_model,
                  "ppo": _ppo})
def _load_reward_model(folder):
    from . import reward_model as R

    return R.load(folder, tokenizer())


_LOADERS = {"pretrain": _load_model, "sft": _load_model, "ppo": _load_model, "preferences": _load_preferences,
            "reward_model": _load_reward_model}


# ---------------------------------------------------------------- notebook 09: a stronger critic
def _pretrain_continued(recipe, out, progress=True):
    """More pretraining of an existing artefact on the same corpus: the same model, trained longer."""
    from .training import lm_example, train

    tok = tokenizer()
    model = get(recipe["from"], progress)
    rows = [r for f in recipe["data"] for r in D.read_jsonl(DATA_DIR / f)]
    log = train(model, [lm_example(tok, r["text"]) for r in rows], steps=recipe["steps"],
                batch_size=recipe["batch_size"], lr=recipe["lr"], seed=recipe["seed"], pad_id=tok.pad_token_id,
                progress=progress, desc="pretraining (continued)")
    model.save_pretrained(str(out))
    return {"losses": log["losses"], "train_seconds": log["seconds"], "tokens": log["tokens"],
            "parameters": sum(p.numel() for p in model.parameters())}


# "base" pretrained for 900 more steps on the same corpus (about a minute): notebook 09's stronger critic
register("base_strong", {"kind": "pretrain_continued", "from": "base", "steps": 900, "batch_size": 32, "lr": 1e-3,
                         "seed": 1, "data": ["pretrain.jsonl"]}, _pretrain_continued)
_LOADERS["pretrain_continued"] = _load_model
