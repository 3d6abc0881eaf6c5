"""The methods compared (notebook 10): one protocol for SFT, RLHF with PPO, DPO and Constitutional AI, every
phase of a method's cost counted, every run scored on the same held-out prompts, and the statistics that
compare them.

    PHASES[method]                  every phase a method needs after the pretrained base model, in order
    Scale                           the sizes of the phases (the notebooks' settings, trimmed to fit the budget)
    run(method, knob, seed, ...)    one run, cached as the artefact "method_run": its own phase's seconds and
                                    its responses' gold scores on the validation, test, novel and safety prompts
    costs(run)                      {phase: seconds} for every phase in PHASES[run's method]: the run's own
                                    phase plus the shared ones it needs (each measured once, charged to every run)
    bootstrap(stat, scores)         a statistic of per-method (seeds, prompts) score matrices, with a 95% interval
                                    that resamples the prompts (shared by the methods) and each method's seeds
    claim_verdict(lo, hi, low, high)  "HOLDS", "DIFFERS" or "INCONCLUSIVE" against a range stated beforehand

A seed re-runs a method's last, optimising phase (SFT, PPO, DPO, or RL-CAI's PPO) with new randomness
(batch order, sampling); the data a method collects — human comparisons, AI revisions and AI labels — and
the models trained on it (reward and preference models) are built once, as a team collects its data once,
and their cost is charged to every run. Taught in notebook 10.
"""
import copy
import functools
import json
import math
import random
import time
from dataclasses import asdict, dataclass

import torch

from . import cai, chat, checkpoints, data, dpo, metrics, ppo, sft
from . import reward_model as R
from . import world as W
from .memory import peak_memory
from .training import check_int

METHODS = ("sft", "ppo", "dpo", "cai")
PHASES = {  # method -> every phase it needs after the pretrained base model, in the order they run
    "sft": ("SFT",),
    "ppo": ("SFT", "sample responses to label", "reward model", "PPO"),
    "dpo": ("SFT", "sample responses to label", "reference log-probs", "DPO"),
    # RL-CAI as Bai et al. (notebook 09): its preference model reads 06's SFT trunk and learns from the human
    # helpfulness comparisons, so SFT and their sampling are charged to it too
    "cai": ("SFT", "sample responses to label", "SL-CAI critiques and revisions", "SL-CAI SFT",
            "sample AI comparisons", "AI labels", "preference model", "PPO"),
}
OWN_PHASE = {"sft": "SFT", "ppo": "PPO", "dpo": "DPO", "cai": "PPO"}  # the phase a seed re-runs
KNOBS = {"sft": None, "ppo": "beta", "dpo": "beta", "cai": "beta"}  # each method's main knob (PPO's: the KL coefficient)
MODELS_HELD = {  # the most models a method holds in memory at once, counted from its code (not measured)
    "sft": 1,  # the policy
    "ppo": 4,  # policy, frozen reference, reward model, value model
    "dpo": 1,  # the policy; the reference's log-probs are cached (notebook 08)
    "cai": 4,  # RL phase as PPO; the SL phase holds two (the model and its critic)
}
SPLITS = ("val", "test", "novel", "safety")
BASE_LR = {"sft": 5e-4, "ppo": 1e-4, "dpo": 1e-4, "cai": 1e-4}  # the notebooks' learning rates
PM_PRINCIPLES = ["harmless", "not_overcautious"]  # notebook 09's default for the AI harmlessness comparisons


@dataclass(frozen=True)
class Scale:
    """The sizes of every phase: the notebooks' settings, the optimising phases trimmed so that notebook 10's
    5 seeds, 3 settings per knob and learning-rate stress runs fit its budget (say what is trimmed)."""

    sft_steps: int = 150  # SFT steps of 32 demonstrations (notebook 05's recipe, not trimmed)
    ppo_iterations: int = 7  # PPO rollout -> update rounds of 64 prompts (notebook 07: 30; under a quarter)
    dpo_steps: int = 16  # DPO steps of 64 pairs (notebook 08: 40; two fifths)
    cai_prompts: int = 200  # SL-CAI: prompts answered, critiqued and revised (notebook 09: 600)
    cai_revisions: int = 2  # SL-CAI: critique -> revision rounds, a random principle each (notebook 09: 3)
    cai_k: int = 3  # AI comparisons: responses sampled per red-team prompt, every distinct pair labelled (09: 4)
    pm_epochs: int = 30  # preference-model head epochs (notebooks 06 and 09)
    n_val: int = 130  # held-out "main" prompts that choose each method's setting; the other main prompts are the test split
    n_kl: int = 64  # test prompts whose sampled responses measure the exact KL to the method's starting model

    def __post_init__(self):
        for name, value in asdict(self).items():
            check_int(name, value)


def eval_prompts(n_val=Scale.n_val):
    """{split: prompts}: "val" chooses settings, "test" reports (both from the held-out "main" split, one request
    in a training phrasing each, divided at random), "novel" (the same requests in phrasings no training file
    uses: generalisation) and "safety" (forbidden and look-alike requests, some never seen: harm, over-refusal)."""
    e = data.load("eval")
    by = {s: [p for p, x in zip(e["prompt"], e["split"]) if x == s] for s in ("main", "novel", "safety")}
    main = random.Random(0).sample(by["main"], len(by["main"]))
    if not 0 < n_val < len(main):
        raise ValueError(f"n_val must be between 1 and {len(main) - 1} (the main split has {len(main)} prompts)")
    return {"val": sorted(main[:n_val]), "test": sorted(main[n_val:]), "novel": by["novel"], "safety": by["safety"]}


def score_rows(model, tok, prompts):
    """Greedy responses scored by the gold reward: one dict per prompt (total, each component, refused, family,
    look-alike, response)."""
    rows = metrics.score(prompts, chat.respond(model, tok, prompts, batch_size=256))  # greedy, as metrics.evaluate
    return [{"total": r["total"], **{k: r[k] for k in W.WEIGHTS}, "refused": W.is_refusal(r["response"]),
             "family": r["family"], "lookalike": W.parse_request(r["prompt"]).lookalike, "response": r["response"]}
            for r in rows]


def _kl(model, start, tok, prompts, seed):
    with torch.no_grad():
        ro = ppo.rollout(model, tok, prompts, generator=torch.Generator().manual_seed(seed))
        return metrics.exact_kl(model, start, ro).mean().item()


# ---------------------------------------------------------------- shared phases, built once
_REFERENCE = {}


def reference_logprobs(sft_model, tok, pairs, key):
    """DPO's reference log-probs of `pairs` under the SFT model, computed once per process and `key`:
    (logps, seconds it took) — the seconds are charged to every DPO run."""
    if key not in _REFERENCE:
        t0 = time.perf_counter()
        logps = dpo.precompute_reference_logprobs(sft_model, tok, pairs)
        _REFERENCE[key] = (logps, time.perf_counter() - t0)
    return _REFERENCE[key]


def red_team_prompts():
    """The training prompts RL-CAI's AI comparisons are sampled on: forbidden requests and their look-alikes."""
    return [r["prompt"] for r in data.load("prompts") if r["family"] == "forbidden"
            or W.parse_request(r["prompt"]).lookalike]


def human_helpfulness_rows(prefs):
    """Notebook 06's training comparisons on benign prompts, as the preference model's rows (P(chosen) = 1)."""
    return [dict(r, p_chosen=1.0) for r in prefs["train"] if W.parse_request(r["prompt"]).family != "forbidden"]


def _build_cai_inputs(recipe, parents, out, progress):
    """RL-CAI's data and preference model (notebook 09 §6–7): SL-CAI from the base model with the strong critic,
    AI harmlessness comparisons sampled from it on the red-team prompts (one principle drawn per comparison),
    and a preference model (06's frozen SFT trunk, a fresh head) on human helpfulness + AI comparisons."""
    tok = checkpoints.tokenizer()
    critic = cai.make_critic("strong", tokenizer=tok, strong_model=parents["base_strong"]())
    base = parents["base"]()
    prompts = cai.sample_prompts(list(data.load("prompts")), recipe["cai_prompts"], seed=recipe["seed"])
    phases = {}
    t0 = time.perf_counter()
    responses = chat.respond(base, tok, prompts, temperature=1.0, seed=recipe["seed"])
    history = cai.critique_revision_rounds(critic, prompts, responses, recipe["cai_revisions"], seed=recipe["seed"])
    phases["SL-CAI critiques and revisions"] = time.perf_counter() - t0
    sl = copy.deepcopy(base)
    log = sft.train_sft(sl, tok, cai.revision_rows(prompts, history["responses"][-1]),
                        sft.SFTConfig(steps=recipe["sft_steps"], seed=recipe["seed"]), progress=False)
    phases["SL-CAI SFT"] = log.seconds
    critic_calls = recipe["cai_revisions"] * len(prompts) + sum(n is not None for c in history["critiques"] for n in c)
    t0 = time.perf_counter()
    hp, ha, hb = cai.sample_comparisons(sl, tok, red_team_prompts(), k=recipe["cai_k"], seed=recipe["seed"] + 10)
    phases["sample AI comparisons"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    probs, _ = critic.compare_sampled(hp, ha, hb, seed=recipe["seed"], principles=recipe["principles"])
    phases["AI labels"] = time.perf_counter() - t0
    human = human_helpfulness_rows(parents["preferences"]())
    ai = [{"prompt": p, "chosen": a, "rejected": b, "p_chosen": q} for p, a, b, q in zip(hp, ha, hb, probs)]
    pm = R.RewardModel(parents["sft"](), tok)
    for p in pm.trunk.parameters():
        p.requires_grad_(False)
    pm_log = cai.train_preference_model(pm, human + ai, epochs=recipe["pm_epochs"], seed=recipe["seed"])
    phases["preference model"] = pm_log["seconds"]
    sl.save_pretrained(str(out / "sl_cai"))
    R.save(pm, out / "pm")
    return {"phases": phases, "critic_calls": critic_calls, "ai_comparisons": len(ai), "human_comparisons": len(human)}


def _load_cai_inputs(folder):
    return {"sl_cai": checkpoints.load_hf_model(folder / "sl_cai"), "pm": R.load(folder / "pm", checkpoints.tokenizer()),
            "meta": json.loads((folder / checkpoints.META).read_text())}


# ---------------------------------------------------------------- one run
def _build_run(recipe, parents, out, progress):
    """Train one method at one setting and seed (its last phase only; the shared phases come cached), then score
    its greedy responses on every split and measure its KL to its starting model."""
    method, knob, seed, lr = recipe["method"], recipe["knob"], recipe["seed"], BASE_LR[recipe["method"]] * recipe["lr_factor"]
    scale = Scale(**recipe["scale"])
    tok = checkpoints.tokenizer()
    train_prompts = [r["prompt"] for r in data.load("prompts")]
    own = {}
    if method == "sft":
        start = parents["base"]()
        model = copy.deepcopy(start)
        log = sft.train_sft(model, tok, list(data.load("sft")), sft.SFTConfig(steps=scale.sft_steps, lr=lr, seed=seed),
                            progress=False)
        own["SFT"], losses = log.seconds, log.losses
    elif method in ("ppo", "cai"):
        if method == "ppo":
            start, rm = parents["sft"](), parents["reward_model"]()
        else:
            inputs = checkpoints.get("cai_inputs", progress, **cai_recipe(scale))
            start, rm = inputs["sl_cai"], inputs["pm"]
        model = copy.deepcopy(start)
        cfg = ppo.PPOConfig(iterations=scale.ppo_iterations, beta=knob, lr=lr, seed=seed)
        log = ppo.train_ppo(model, start, rm.score, ppo.value_model_from(rm), tok, train_prompts, cfg, progress=False)
        own["PPO"], losses = log.seconds, log.policy_loss + log.value_loss
    elif method == "dpo":
        start, prefs = parents["sft"](), parents["preferences"]()
        ref_logps, ref_seconds = reference_logprobs(start, tok, prefs["train"], checkpoints.fingerprint("preferences"))
        model = copy.deepcopy(start)
        log = dpo.train_dpo(model, tok, prefs["train"], dpo.DPOConfig(beta=knob, steps=scale.dpo_steps, lr=lr, seed=seed),
                            ref_logps=ref_logps, progress=False)
        if log.ref_seconds != 0.0:
            raise RuntimeError("DPO recomputed its reference inside train_dpo: charge it once, not twice")
        own["DPO"], own["reference log-probs"], losses = log.seconds, ref_seconds, log.losses
    else:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    prompts = eval_prompts(scale.n_val)
    scores = {s: score_rows(model, tok, prompts[s]) for s in recipe["splits"]}
    kl = _kl(model, start, tok, prompts["test"][:scale.n_kl], seed) if "test" in recipe["splits"] else None
    (out / "scores.json").write_text(json.dumps(scores))
    return {"own_phases": own, "kl": kl, "finite": all(math.isfinite(x) for x in losses)}


def _load_run(folder):
    meta = json.loads((folder / checkpoints.META).read_text())
    return {**meta, "scores": json.loads((folder / "scores.json").read_text())}


def cai_recipe(scale):
    return {"cai_prompts": scale.cai_prompts, "cai_revisions": scale.cai_revisions, "cai_k": scale.cai_k,
            "pm_epochs": scale.pm_epochs, "sft_steps": scale.sft_steps}


for _a in (
    checkpoints.Artefact("cai_inputs", _build_cai_inputs, _load_cai_inputs,
                         parents=("base", "base_strong", "sft", "preferences"),
                         doc="RL-CAI's SL-CAI model and preference model (notebooks 09 and 10)",
                         recipe={"cai_prompts": Scale.cai_prompts, "cai_revisions": Scale.cai_revisions, "cai_k": Scale.cai_k,
                                 "pm_epochs": Scale.pm_epochs, "sft_steps": Scale.sft_steps, "seed": 0,
                                 "principles": PM_PRINCIPLES},
                         extra_code=(_load_cai_inputs,)),
    checkpoints.Artefact("method_run", _build_run, _load_run, parents=("base", "base_strong", "sft", "preferences", "reward_model"),
                         doc="one run of notebook 10's comparison: a method at a setting and seed, scored",
                         recipe={"method": "dpo", "knob": 0.1, "seed": 0, "lr_factor": 1.0, "scale": asdict(Scale()),
                                 "splits": list(SPLITS)},
                         extra_code=(_load_run,)),
):
    if _a.name not in checkpoints.ARTEFACTS:
        checkpoints.register(_a)


def run(method, knob=None, seed=0, lr_factor=1.0, scale=None, splits=SPLITS, progress=False):
    """One run of `method` at setting `knob` (its main knob, KNOBS[method]; None for SFT) and `seed`, with the
    learning rate × lr_factor, scored on `splits`: built and cached the first time (the artefact "method_run"), then
    loaded. Returns its metadata: "own_phases" {phase: seconds}, "kl" (None without the test split), "finite" (every
    loss finite), "scores" {split: rows}, "recipe"."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if (KNOBS[method] is None) != (knob is None):
        raise ValueError(f"{method}: " + ("takes no knob (pass knob=None)" if KNOBS[method] is None else
                                          f"pass its {KNOBS[method]} as knob=..."))
    if knob is not None and (isinstance(knob, bool) or not isinstance(knob, (int, float)) or not knob >= 0):
        raise ValueError(f"knob must be a number >= 0 ({KNOBS[method]}), got {knob!r}")
    if isinstance(lr_factor, bool) or not isinstance(lr_factor, (int, float)) or not lr_factor > 0:
        raise ValueError(f"lr_factor must be a positive number (1 = the notebook's learning rate), got {lr_factor!r}")
    check_int("seed", seed, 0)
    scale = Scale() if scale is None else scale
    if not isinstance(scale, Scale):
        raise ValueError(f"scale must be a comparison.Scale, got {type(scale).__name__}")
    if isinstance(splits, str) or not splits or not set(splits) <= set(SPLITS):
        raise ValueError(f"splits must be a list of some of {SPLITS}, got {splits!r}")
    return checkpoints.get("method_run", progress, method=method, knob=None if knob is None else float(knob), seed=seed,
                           lr_factor=float(lr_factor), scale=asdict(scale), splits=[s for s in SPLITS if s in splits])


@functools.lru_cache(maxsize=None)
def _artefact_seconds(name, field_name, **overrides):
    return checkpoints.info(name, False, **overrides)[field_name]


def shared_phases(method, scale=None):
    """{phase: seconds} of the phases built once and charged to every run of `method`: SFT (the SFT method's seed-0 run,
    the same recipe as the cached SFT model the others start from, timed with the other runs), and — measured when
    each artefact was built, on this machine — the sampling of responses for the annotators, the reward model, and
    RL-CAI's data and preference model. (An artefact built together with a missing parent counts the parent's time
    too: run `python -m course_lib.prepare` first, as CI and a workshop do.)"""
    scale = Scale() if scale is None else scale
    out = {}
    if method != "sft":
        out["SFT"] = run("sft", None, 0, scale=scale)["own_phases"]["SFT"]
        out["sample responses to label"] = _artefact_seconds("preferences", "build_seconds")
    if method == "ppo":
        out["reward model"] = _artefact_seconds("reward_model", "train_seconds")
    if method == "cai":
        out.update(checkpoints.info("cai_inputs", False, **cai_recipe(scale))["phases"])
    return out


def costs(r, scale=None):
    """{phase: seconds} of run `r` (from `run`) for every phase in PHASES[its method], in order: its own phases plus
    the shared ones. A phase with no measured time is an error, never a silent 0."""
    method = r["recipe"]["method"]
    have = {**shared_phases(method, scale), **r["own_phases"]}
    missing = [p for p in PHASES[method] if p not in have]
    if missing:
        raise ValueError(f"{method}: no measured time for phase(s) {missing}; every phase must be counted")
    return {p: have[p] for p in PHASES[method]}


def labels(method, scale=None):
    """{"demonstrations", "human comparisons", "AI labels"} a method uses. PPO's reward model chooses its epoch on
    the validation comparisons, so those count too; RL-CAI's AI labels are the critic's critiques and revisions
    plus its comparisons."""
    prefs = checkpoints.get("preferences", False)
    demos = len(data.load("sft"))
    if method == "sft":
        return {"demonstrations": demos, "human comparisons": 0, "AI labels": 0}
    if method == "ppo":
        return {"demonstrations": demos, "human comparisons": len(prefs["train"]) + len(prefs["val"]), "AI labels": 0}
    if method == "dpo":
        return {"demonstrations": demos, "human comparisons": len(prefs["train"]), "AI labels": 0}
    meta = checkpoints.info("cai_inputs", False, **cai_recipe(Scale() if scale is None else scale))
    return {"demonstrations": demos, "human comparisons": meta["human_comparisons"],
            "AI labels": meta["critic_calls"] + meta["ai_comparisons"]}


def step_peak_bytes(method, sequences=64, seed=0):
    """The most bytes one optimising step of `method` holds at once (CPU allocator, `memory.peak_memory`), at
    `sequences` sequences per step: SFT `sequences` demonstrations, DPO sequences/2 pairs (two sequences each,
    reference cached), PPO one iteration of `sequences` prompts updated in one minibatch. RL-CAI's step is PPO's
    (its preference model is the reward model's size)."""
    check_int("sequences", sequences, 2)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    tok = checkpoints.tokenizer()
    demos, prompts = list(data.load("sft")), [r["prompt"] for r in data.load("prompts")]
    pairs = checkpoints.get("preferences", False)["train"][:sequences // 2]

    def step():  # every model the step holds is loaded inside the measured call, so its weights count
        if method == "sft":
            sft.train_sft(checkpoints.get("base", False), tok, demos, sft.SFTConfig(steps=1, batch_size=sequences, seed=seed),
                          progress=False)
        elif method == "dpo":
            model = checkpoints.get("sft", False)
            ref = dpo.precompute_reference_logprobs(model, tok, pairs)  # the cached reference: computed once, then kept
            dpo.train_dpo(model, tok, pairs, dpo.DPOConfig(steps=1, batch_size=sequences // 2, warmup=0, seed=seed),
                          ref_logps=ref, progress=False)
        else:
            rm = checkpoints.get("reward_model", False)
            cfg = ppo.PPOConfig(iterations=1, batch_size=sequences, minibatch_size=sequences, epochs=1, seed=seed)
            ppo.train_ppo(checkpoints.get("sft", False), checkpoints.get("sft", False), rm.score, ppo.value_model_from(rm),
                          tok, prompts, cfg, progress=False)
    return peak_memory(step)[1]


# ---------------------------------------------------------------- statistics
def score_matrix(runs, split, key="total", rows=None):
    """(seeds, prompts) float64 tensor of `key` over the runs of one method (one row per seed) on `split`;
    `rows(row) -> bool` keeps some prompts only (e.g. the forbidden ones)."""
    if not runs:
        raise ValueError("no runs: pass the list of one method's runs, one per seed")
    keep = [i for i, r in enumerate(runs[0]["scores"][split]) if rows is None or rows(r)]
    if not keep:
        raise ValueError(f"no prompts of split {split!r} pass the filter")
    return torch.tensor([[float(r["scores"][split][i][key]) for i in keep] for r in runs], dtype=torch.float64)


def bootstrap(stat, scores, n_boot=2000, seed=0):
    """(stat on the data, lo, hi): `stat({method: (B, S, P) tensor}) -> (B,)` evaluated on the measured score
    matrices {method: (S, P)} and on n_boot resamples, each drawing the P prompts with replacement (the same draw for
    every method: they answered the same prompts) and each method's S seeds with replacement. The interval is the
    2.5th and 97.5th percentiles: it holds both sources of noise, the prompts and the seeds."""
    if not scores:
        raise ValueError("scores must map each method to its (seeds, prompts) tensor")
    n_prompts = {m: s.shape[1] for m, s in scores.items()}
    if len(set(n_prompts.values())) != 1:
        raise ValueError(f"every method must be scored on the same prompts, got {n_prompts}")
    g = torch.Generator().manual_seed(seed)
    P = next(iter(n_prompts.values()))
    p_idx = torch.randint(P, (n_boot, 1, P), generator=g)
    draws = {}
    for m, s in scores.items():
        s_idx = torch.randint(s.shape[0], (n_boot, s.shape[0], 1), generator=g)
        draws[m] = s[s_idx, p_idx]  # (n_boot, S, P)
    value = torch.as_tensor(stat({m: s[None] for m, s in scores.items()}))
    if value.shape != (1,):
        raise ValueError(f"stat must return one value per resample (a (B,) tensor), got shape {tuple(value.shape)}")
    value = float(value[0])
    boot = stat(draws).double()
    if boot.shape != (n_boot,):
        raise ValueError(f"stat must return one value per resample, shape ({n_boot},), got {tuple(boot.shape)}")
    lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return value, lo, hi


def ratio_of_means(num, den, n_boot=2000, seed=0):
    """(mean(num) / mean(den), lo, hi): a ratio of two independent samples' means (e.g. seconds per seed of two
    methods) and its 95% percentile-bootstrap interval, each sample's values resampled on its own."""
    a, b = torch.as_tensor(num, dtype=torch.float64), torch.as_tensor(den, dtype=torch.float64)
    if a.dim() != 1 or b.dim() != 1 or not len(a) or not len(b) or not (b > 0).all():
        raise ValueError("num and den must be non-empty lists of numbers, den all positive (e.g. seconds per seed)")
    g = torch.Generator().manual_seed(seed)
    ra = a[torch.randint(len(a), (n_boot, len(a)), generator=g)].mean(1)
    rb = b[torch.randint(len(b), (n_boot, len(b)), generator=g)].mean(1)
    lo, hi = torch.quantile(ra / rb, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return a.mean().item() / b.mean().item(), lo, hi


def win_rates(a, b):
    """(B,) paired win rates of method a over b from (B, Sa, P) and (B, Sb, P) scores: on each prompt every seed of a
    meets every seed of b, a win counts 1 and a tie ½, averaged over seed pairs and prompts."""
    d = a[:, :, None, :] - b[:, None, :, :]  # (B, Sa, Sb, P)
    return ((d > 0).double() + 0.5 * (d == 0).double()).mean((1, 2, 3))


def headroom(method_scores, sft_scores, best=W.GOLD_MAX):
    """(B,) gain over SFT as a share of SFT's headroom: (mean of method − mean of SFT) / (best − mean of SFT)."""
    s = sft_scores.mean((1, 2))
    return (method_scores.mean((1, 2)) - s) / (best - s)


def claim_verdict(lo, hi, low=-math.inf, high=math.inf):
    """What a 95% interval [lo, hi] says of a claim stated beforehand as "the value lies in [low, high]":
    "HOLDS" if the interval lies inside the range, "DIFFERS" if it lies entirely outside, else "INCONCLUSIVE"."""
    for name, v in (("lo", lo), ("hi", hi)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v):
            raise ValueError(f"{name} must be a number, got {v!r}")
    if lo > hi or low > high:
        raise ValueError(f"need lo <= hi and low <= high, got [{lo}, {hi}] and [{low}, {high}]")
    if low <= lo and hi <= high:
        return "HOLDS"
    if hi < low or lo > high:
        return "DIFFERS"
    return "INCONCLUSIVE"
