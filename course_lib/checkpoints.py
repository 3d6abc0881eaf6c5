"""Artefacts by name: trained deterministically when missing, cached, loaded with safetensors.

    from course_lib import checkpoints
    tok = checkpoints.tokenizer()
    base = checkpoints.get("base")          # pretrains it (about a minute) the first time
    sft = checkpoints.get("sft")            # fine-tunes "base" the first time
    sft1 = checkpoints.get("sft", seed=1)   # the same recipe with another seed: cached separately

Every artefact is declared once, as data (`ARTEFACTS`): its recipe (the builder's parameters),
the artefacts it is built from, the data files it reads, a builder and a loader. Only this
module knows artefacts by name; the methods it calls take models and data as arguments.

Each artefact lives in ``<cache>/checkpoints/<name>-<fingerprint>/``. The fingerprint hashes the
recipe (with any overrides; a local model folder by its files' bytes, not its path), the data files and
tokenizer, the parents' fingerprints, and the
code that builds it (the builder and every course_lib module it uses, docstrings and comments
aside), so a changed recipe, data set or method is rebuilt, never silently reused. Writes are
atomic (a temporary folder renamed into place); an entry that is partial or does not load is
deleted and rebuilt. Weights are safetensors, never pickle.
"""
import ast
import copy
import functools
import hashlib
import inspect
import json
import os
import random
import shutil
import sys
import tempfile
import textwrap
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from . import cai, chat, ppo, preferences, sft
from . import data as D
from . import reward_model as R
from .model import GPT, GPTConfig
from .paths import CACHE_DIR, DATA_DIR
from .training import TrainConfig, lm_example, train

META = "meta.json"
BASE_CONFIG = {"n_positions": 96, "n_embd": 128, "n_layer": 4, "n_head": 4}


@dataclass(frozen=True)
class Artefact:
    """One cached artefact, declared once."""

    name: str
    builder: object  # builder(recipe, parents, out_dir, progress) -> metadata; parents: {name: () -> artefact}
    loader: object  # loader(folder) -> the artefact
    recipe: dict  # the builder's parameters; get(name, **overrides) changes them
    parents: tuple = ()  # artefacts it is built from, by name
    doc: str = ""  # what it is, in a line
    extra_code: tuple = field(default=())  # further functions whose code the fingerprint covers (e.g. the loader)


ARTEFACTS = {}


def register(artefact):
    """Declare an artefact; its name must be new (a test swaps one in with monkeypatch.setitem(ARTEFACTS, ...))."""
    if not isinstance(artefact, Artefact):
        raise ValueError(f"register takes an Artefact, got {type(artefact).__name__}")
    a = artefact
    if not isinstance(a.name, str) or not a.name.replace("_", "").isalnum() or not a.name.isascii():
        raise ValueError(f"an artefact's name must be letters, digits and underscores (it names a folder), "
                         f"got {a.name!r}")
    if a.name in ARTEFACTS:
        raise ValueError(f"artefact {a.name!r} is already declared; choose a new name")
    if not callable(a.builder) or not callable(a.loader):
        raise ValueError(f"artefact {a.name!r}: builder and loader must be functions, got "
                         f"{type(a.builder).__name__} and {type(a.loader).__name__}")
    if not isinstance(a.recipe, dict):
        raise ValueError(f"artefact {a.name!r}: recipe must be a dict of the builder's parameters, "
                         f"got {type(a.recipe).__name__}")
    if not isinstance(a.parents, tuple) or not all(isinstance(p, str) for p in a.parents):
        raise ValueError(f"artefact {a.name!r}: parents must be a tuple of artefact names, got {a.parents!r}")
    for p in artefact.parents:
        if p not in ARTEFACTS:
            raise ValueError(f"artefact {artefact.name!r} builds on {p!r}, which is not declared; declare it first")
    ARTEFACTS[artefact.name] = artefact
    return artefact


def artefact(name):
    if name not in ARTEFACTS:
        raise ValueError(f"unknown artefact {name!r}; known: {sorted(ARTEFACTS)}")
    return ARTEFACTS[name]


def recipe(name, **overrides):
    """The recipe of artefact `name` with overrides applied (unknown keys are an error)."""
    a = artefact(name)
    unknown = sorted(set(overrides) - set(a.recipe))
    if unknown:
        raise ValueError(f"artefact {name!r} has no recipe parameter {', '.join(map(repr, unknown))}; "
                         f"its parameters: {sorted(a.recipe)}")
    out = copy.deepcopy(a.recipe)
    out.update(overrides)
    try:
        json.dumps(out, sort_keys=True)
    except TypeError as e:
        raise ValueError(f"recipe parameters must be plain JSON values (numbers, strings, lists): {e}") from None
    return out


def root():
    return Path(os.environ.get("COURSE_CACHE_DIR", CACHE_DIR)) / "checkpoints"


# ---------------------------------------------------------------- fingerprints
def _file_digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _folder_digest(folder):
    """A local model folder's identity: its config and weight files' bytes."""
    folder = Path(folder)
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.suffix in (".json", ".safetensors", ".bin", ".model", ".txt") and f.is_file():
            h.update(f.name.encode())
            h.update(_file_digest(f).encode())
    return h.hexdigest()


def _strip_docstrings(tree):
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) \
                and isinstance(getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    return tree


def _code_digest(source):
    """The code of `source`, docstrings and comments aside (they do not change what is built).

    A nested function's source is indented: it is dedented first. Source that still does not parse
    on its own (a lambda inside a longer line) is hashed as text."""
    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError:
        return hashlib.sha256(source.encode()).hexdigest()
    return hashlib.sha256(ast.dump(_strip_docstrings(tree)).encode()).hexdigest()


def _code_closure(fn):
    """(functions, modules): `fn`, the functions of this module it calls (transitively), and the course_lib
    modules their code refers to together with every course_lib module those import."""
    functions, modules, todo = [], set(), [fn]
    while todo:
        f = todo.pop()
        if f in functions:
            continue
        functions.append(f)
        codes = [f.__code__]
        while codes:
            code = codes.pop()
            codes += [c for c in code.co_consts if isinstance(c, types.CodeType)]
            for name in code.co_names:
                value = f.__globals__.get(name)
                if isinstance(value, types.FunctionType) and value.__module__ == __name__:
                    todo.append(value)
                elif _course_module(value):
                    modules.add(_course_module(value))
    deps = sorted(modules)
    while deps:
        m = deps.pop()
        for value in vars(sys.modules[m]).values():
            dep = _course_module(value)
            if dep and dep not in modules:
                modules.add(dep)
                deps.append(dep)
    return functions, sorted(modules)


def _course_module(value):
    """The name of the course_lib module `value` is or was defined in (not this one, not paths), else None."""
    name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
    if isinstance(name, str) and name.startswith("course_lib.") and name not in (__name__, "course_lib.paths"):
        return name
    return None


@functools.lru_cache(maxsize=None)
def _code_digest_of(functions):
    h = hashlib.sha256()
    for fn in functions:
        own, modules = _code_closure(fn)
        for f in own:
            h.update(_code_digest(inspect.getsource(f)).encode())
        for m in modules:
            h.update(m.encode())
            h.update(_code_digest(inspect.getsource(sys.modules[m])).encode())
    return h.hexdigest()


def code_fingerprint(name):
    """Hash of the code that builds artefact `name`: its builder and the course_lib modules it uses."""
    a = artefact(name)
    return _code_digest_of((a.builder, *a.extra_code))


def fingerprint(name, **overrides):
    """Hash of the recipe, the data files it reads, the tokenizer, the parents' fingerprints and the code."""
    a = artefact(name)
    r = recipe(name, **overrides)
    model = r.get("model")
    if model:  # built from a local model folder: that model's bytes, wherever the folder is
        r["model"] = _folder_digest(_model_folder(model))
    h = hashlib.sha256(json.dumps({"name": name, "recipe": r}, sort_keys=True).encode())
    for f in r.get("data", []):  # the data files it reads
        h.update(_file_digest(DATA_DIR / f).encode())
    h.update(_file_digest(DATA_DIR / "tokenizer" / "tokenizer.json").encode())
    for p in a.parents:
        h.update(fingerprint(p, **_inherited(p, model)).encode())
    h.update(code_fingerprint(name).encode())
    return h.hexdigest()[:12]


def _inherited(parent, model):
    """The overrides a parent is built with: the same local model folder, where its recipe takes one."""
    return {"model": model} if model and "model" in artefact(parent).recipe else {}


def path(name, **overrides):
    return root() / f"{name}-{fingerprint(name, **overrides)}"


# ---------------------------------------------------------------- build, check, load
def _valid(name, folder):
    try:
        meta = json.loads((folder / META).read_text())
        artefact(name).loader(folder)
        return meta.get("complete") is True
    except Exception:  # noqa: BLE001 - anything unreadable is rebuilt
        return False


def build(name, progress=True, **overrides):
    """Train artefact `name` now and cache it atomically; returns its folder."""
    a, r = artefact(name), recipe(name, **overrides)
    target = path(name, **overrides)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    parents = {p: (lambda p=p: get(p, progress, **_inherited(p, r.get("model")))) for p in a.parents}
    try:
        t0 = time.perf_counter()
        meta = a.builder(r, parents, tmp, progress)
        meta.update({"name": name, "recipe": r, "parents": list(a.parents), "fingerprint": target.name.split("-")[-1],
                     "build_seconds": time.perf_counter() - t0, "complete": True})
        (tmp / META).write_text(json.dumps(meta, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure(name, progress=True, **overrides):
    """The folder of artefact `name`, building it (and, as it needs them, its parents) if missing or corrupt."""
    folder = path(name, **overrides)
    if folder.exists() and _valid(name, folder):
        return folder
    if folder.exists():
        shutil.rmtree(folder)  # partial or corrupt: rebuild
    return build(name, progress, **overrides)


def get(name, progress=True, **overrides):
    """Artefact `name` (recipe parameters overridden by keyword), built and cached first if needed: a model
    (eval mode), a reward model, or for "preferences" a dict {"train": rows, "val": rows, "test": rows}
    (val chooses the reward model's epoch; test is for reporting only).

    Overrides change this artefact's own recipe only: get("ppo", seed=1) trains PPO with seed 1 from the
    default ("seed 0") SFT model and reward model. One exception, `model` (a local model folder): the
    parents that take it are built from the same folder, so get("ppo", model=path) is that model's chain."""
    return artefact(name).loader(ensure(name, progress, **overrides))


def info(name, progress=True, **overrides):
    """The metadata an artefact was saved with (recipe, losses, seconds, ...)."""
    return json.loads((ensure(name, progress, **overrides) / META).read_text())


def tokenizer():
    """The course's tokenizer (shipped with the data)."""
    return D.load_tokenizer()


def load_hf_model(folder):
    """A causal LM saved with save_pretrained (safetensors), in eval mode."""
    return AutoModelForCausalLM.from_pretrained(str(folder), use_safetensors=True).eval()


def _model_folder(name_or_path):
    """The local model directory `name_or_path` names, checked to hold a model's config."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        raise FileNotFoundError(f"{name_or_path!r} is neither a course artefact ({sorted(ARTEFACTS)}) "
                                "nor a local model directory (one with config.json and weights)")
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} has no config.json; save the model with save_pretrained() first")
    return folder


def load_model(name_or_path, progress=True):
    """A course artefact by name, or any local Hugging Face causal LM directory by path.

    A folder's model gets embeddings for the role tokens its tokenizer lacked (`chat.fit_embeddings`),
    so it pairs with `load_tokenizer(name_or_path)`."""
    if name_or_path in ARTEFACTS:
        return get(name_or_path, progress)
    folder = _model_folder(name_or_path)
    config = AutoConfig.from_pretrained(str(folder))
    try:
        model = load_hf_model(folder)
    except ValueError as e:
        if "Unrecognized configuration class" not in str(e):
            raise
        raise ValueError(f"{folder} holds a {config.model_type!r} model ({', '.join(config.architectures or [])}), "
                         "not a causal language model: pass a folder saved from an AutoModelForCausalLM "
                         "(GPT2LMHeadModel, LlamaForCausalLM, ...)") from None
    return chat.fit_embeddings(model, load_tokenizer(name_or_path))


def load_tokenizer(name_or_path):
    """The tokenizer for a model: the course's for an artefact (or a course GPT saved without one), else the
    folder's own, made ready for the chat template (`chat.prepare_tokenizer`: role tokens, a pad token)."""
    if name_or_path in ARTEFACTS:
        return tokenizer()
    folder = _model_folder(name_or_path)
    if not any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
        if AutoConfig.from_pretrained(str(folder)).model_type == GPTConfig.model_type:
            return tokenizer()  # the course's own GPT, saved without its tokenizer
        raise FileNotFoundError(f"{folder} has no tokenizer (tokenizer.json); save the one the model was trained "
                                f"with there: tokenizer.save_pretrained({str(folder)!r})")
    return chat.prepare_tokenizer(AutoTokenizer.from_pretrained(str(folder)))


def load_critic(name_or_path, name=None):
    """A `cai.ModelCritic` from a course artefact ("base", "base_strong", ...) or a local HF model directory."""
    return cai.ModelCritic(load_model(name_or_path), load_tokenizer(name_or_path), name=name or str(name_or_path))


# ---------------------------------------------------------------- builders
def _tokenizer_of(recipe):
    """The tokenizer an artefact's model speaks: the course's, or that of the local model folder it is built from."""
    return load_tokenizer(recipe["model"]) if recipe.get("model") else tokenizer()


def _rows(files, key=None):
    rows = [r for f in files for r in D.read_jsonl(DATA_DIR / f)]
    return rows if key is None else [r[key] for r in rows]


def _pretrain(recipe, parents, out, progress):
    """Pretraining on the corpus: a fresh GPT, or more steps for the parent model (the same model, trained longer)."""
    tok = tokenizer()
    torch.manual_seed(recipe["seed"])
    if parents:
        model = next(iter(parents.values()))()
    else:
        model = GPT(GPTConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                              **recipe["config"]))
    rows = _rows(recipe["data"])[:recipe.get("limit")]
    cfg = TrainConfig(steps=recipe["steps"], batch_size=recipe["batch_size"], lr=recipe["lr"], seed=recipe["seed"])
    log = train(model, [lm_example(tok, r["text"]) for r in rows], cfg, pad_id=tok.pad_token_id, progress=progress,
                desc="pretraining (continued)" if parents else "pretraining")
    model.save_pretrained(str(out))
    return {"losses": log.losses, "train_seconds": log.seconds, "tokens": log.tokens,
            "parameters": sum(p.numel() for p in model.parameters())}


def _sft(recipe, parents, out, progress):
    """SFT on the demonstrations, from "base" or, with recipe["model"], from a local Hugging Face model folder."""
    if recipe["model"]:
        model, tok = load_model(recipe["model"]), load_tokenizer(recipe["model"])
        tok.save_pretrained(str(out))
    else:
        model, tok = parents["base"](), tokenizer()
    cfg = sft.SFTConfig(steps=recipe["steps"], batch_size=recipe["batch_size"], lr=recipe["lr"], seed=recipe["seed"])
    log = sft.train_sft(model, tok, _rows(recipe["data"]), cfg, progress=progress)
    model.save_pretrained(str(out))
    return {"losses": log.losses, "train_seconds": log.seconds, "tokens": log.tokens}


def _preferences(recipe, parents, out, progress):
    """K responses sampled from the SFT model per training prompt, ranked by the simulated annotators."""
    tok, policy = _tokenizer_of(recipe), parents["sft"]()
    prompts = random.Random(recipe["seed"]).sample(_rows(recipe["data"], "prompt"), recipe["n_prompts"])
    samples = [chat.respond(policy, tok, prompts, temperature=recipe["temperature"], seed=recipe["seed"] + s)
               for s in range(recipe["k"])]
    rows = preferences.collect(prompts, [list(rs) for rs in zip(*samples)], seed=recipe["seed"])
    n_val = int(recipe["val_fraction"] * recipe["n_prompts"])
    n_test = int(recipe["test_fraction"] * recipe["n_prompts"])
    for r in rows:  # hold out whole prompts (groups), so no prompt is in two splits
        left = recipe["n_prompts"] - r["group"]  # 1 for the last prompt
        r["split"] = "test" if left <= n_test else "val" if left <= n_test + n_val else "train"
    (out / "preferences.jsonl").write_text(D.dumps_jsonl(rows))
    return {"pairs": len(rows), "prompts": len(prompts), "responses_sampled": len(prompts) * recipe["k"]}


def _load_preferences(folder):
    rows = D.read_jsonl(folder / "preferences.jsonl", schema={"prompt": str, "chosen": str, "rejected": str,
                                                                "split": str})
    return {split: [r for r in rows if r["split"] == split] for split in ("train", "val", "test")}


def _reward_model(recipe, parents, out, progress):
    """The SFT trunk (frozen) + a scalar head, Bradley-Terry on the preferences; best epoch on held-out pairs."""
    prefs, tok = parents["preferences"](), _tokenizer_of(recipe)
    rm = R.RewardModel(parents["sft"](), tok)
    cfg = R.RewardConfig(epochs=recipe["epochs"], lr=recipe["lr"], seed=recipe["seed"])
    log = R.train_reward_model(rm, prefs["train"], prefs["val"], cfg)
    R.save(rm, out)
    if recipe["model"]:
        tok.save_pretrained(str(out))
    return {"val_acc": log.val_acc, "train_acc": log.train_acc, "best_epoch": log.best_epoch, "losses": log.losses,
            "train_seconds": log.seconds}


def _load_reward_model(folder):
    own = (Path(folder) / "tokenizer.json").exists()  # built from a local model folder: that model's tokenizer
    return R.load(folder, AutoTokenizer.from_pretrained(str(folder)) if own else tokenizer())


def _ppo(recipe, parents, out, progress):
    """RLHF: PPO from the SFT model against the reward model, KL penalty beta."""
    rm = parents["reward_model"]()
    policy, ref = parents["sft"](), parents["sft"]()
    cfg = ppo.PPOConfig(iterations=recipe["iterations"], beta=recipe["beta"], lr=recipe["lr"],
                        batch_size=recipe["batch_size"], seed=recipe["seed"])
    tok = _tokenizer_of(recipe)
    log = ppo.train_ppo(policy, ref, rm.score, ppo.value_model_from(rm), tok, _rows(recipe["data"], "prompt"),
                        cfg, progress=progress)
    policy.save_pretrained(str(out))
    if recipe["model"]:
        tok.save_pretrained(str(out))
    return {"proxy": log.proxy, "gold": log.gold, "kl": log.kl, "length": log.length, "train_seconds": log.seconds}


# ---------------------------------------------------------------- the artefacts
for _a in [
    Artefact("base", _pretrain, load_hf_model, doc="the pretrained base model: a completion engine (notebook 04)",
             recipe={"config": BASE_CONFIG, "steps": 900, "batch_size": 32, "lr": 2e-3, "seed": 0,
                     "data": ["pretrain.jsonl"], "limit": None}),
    Artefact("base_strong", _pretrain, load_hf_model, parents=("base",),
             doc="base pretrained 900 more steps on the same corpus: notebook 09's stronger critic",
             recipe={"steps": 900, "batch_size": 32, "lr": 1e-3, "seed": 1, "data": ["pretrain.jsonl"], "limit": None}),
    Artefact("sft", _sft, load_hf_model, parents=("base",), doc="base fine-tuned on the demonstrations (notebook 05)",
             recipe={"steps": 150, "batch_size": 32, "lr": 5e-4, "seed": 0, "data": ["sft.jsonl"], "model": None}),
    Artefact("preferences", _preferences, _load_preferences, parents=("sft",),
             doc="annotators' rankings of SFT samples, as pairs (notebook 06)",
             recipe={"n_prompts": 1200, "k": 4, "temperature": 1.0, "seed": 0, "val_fraction": 0.15, "test_fraction": 0.15,
                     "data": ["prompts.jsonl"], "model": None}),
    Artefact("reward_model", _reward_model, _load_reward_model, parents=("preferences", "sft"),
             doc="a Bradley-Terry reward model on the SFT trunk (notebook 06)",
             recipe={"epochs": 30, "lr": 1e-2, "seed": 0, "model": None}, extra_code=(_load_reward_model,)),
    Artefact("ppo", _ppo, load_hf_model, parents=("reward_model", "sft"), doc="RLHF with PPO (notebook 07)",
             recipe={"beta": 0.05, "iterations": 30, "lr": 1e-4, "batch_size": 64, "seed": 0,
                     "data": ["prompts.jsonl"], "model": None}),
]:
    register(_a)


def main(argv=None):
    """python -m course_lib.checkpoints [NAME ...]: build (or check) the named artefacts, default all of them.

    CI runs it before the tests, so that no notebook cell spends minutes training under nbval's watchdog."""
    names = list(sys.argv[1:] if argv is None else argv) or list(ARTEFACTS)
    for name in names:
        artefact(name)  # an unknown name fails before anything is trained
    for name in names:
        t = time.perf_counter()
        folder = ensure(name, progress=False)
        print(f"{name:14s} ready in {time.perf_counter() - t:6.1f} s  {folder}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
