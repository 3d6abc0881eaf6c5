"""Constitutional AI (Bai et al. 2022): a written constitution, critics, critique -> revision, AI feedback.

The constitution is `world.PRINCIPLES`: written principles, each with the critique sentence a
critic says when a response breaks it. Every principle is tied to a rule of the world
(`world.violated_principles`), so any critic's critiques can be checked exactly.

A critic answers three questions, in the course's chat format:

    critique   <|user|> P <|assistant|> R <|critique|>           -> a principle name, or None ("the answer is good .")
    revise     <|user|> P <|assistant|> R <|critique|> C <|revision|>   -> a better response R'
    compare    which of two responses A, B is better under a principle -> P(A better), a soft label

Critics, interchangeable:
    ModelCritic(model, tokenizer)  a language model continuing the text above (the course's own
                                   models saw 900 such passages in pretraining; any local Hugging
                                   Face causal LM works too: `checkpoints.load_critic(path)`)
    OracleCritic()                 the world's rules standing in for a capable LLM (NOT a model:
                                   it knows every rule and, unless knows_facts=False, every fact)

The supervised phase (SL-CAI): responses -> `critique_revision_rounds` (a random principle per
round) -> fine-tune on the final revisions. The AI-feedback phase, as Bai et al. (RL-CAI):
`compare_sampled` (one sampled principle per comparison) labels harmlessness pairs -> with human
helpfulness comparisons, `train_preference_model` (soft-target Bradley-Terry) -> `course_lib.ppo`.
A named variant (RLAIF-DPO, `rlaif_dpo`): labels ensembled over principles (`compare_many`) ->
`ai_preference_pairs` -> `course_lib.dpo`. Both taught in notebook 09 §6-7.
"""
import copy
import itertools
import math
import random
import time

import torch

from . import chat, dpo, metrics, sft
from . import reward_model as R
from . import data as D
from . import world as W
from .model import max_positions
from .training import check_int, check_number

KNOWLEDGE_FAMILIES = ("lookup", "unknown")  # the knowledge-base families
PRINCIPLE_NAMES = W.PRINCIPLE_NAMES  # the constitution, in its order
_SENTENCE = {p["name"]: p["critique"] for p in W.PRINCIPLES}


# ---------------------------------------------------------------- the constitution


def check_principle(principle):
    if principle not in _SENTENCE:
        raise ValueError(f"unknown principle {principle!r}; the constitution has {PRINCIPLE_NAMES}")
    return principle


def critique_sentence(principle):
    """The critique a critic writes for a broken principle; None (nothing wrong) -> "the answer is good ."."""
    return W.GOOD_CRITIQUE if principle is None else _SENTENCE[check_principle(principle)]


def _keywords(sentence):
    return set(sentence.split()) - {"the", "answer", "is", ".", "a"}


def parse_critique(text):
    """The principle a written critique names, or None if it names none (a good answer, or gibberish).

    An exact critique sentence maps to its principle; other text maps to the one sentence whose
    distinctive words ("rude", "harmful", "too long", ...) it shares most, if that is unique."""
    if not isinstance(text, str):
        raise ValueError(f"a critique must be a string, got {type(text).__name__}")
    t = W.normalize_response(text.replace("<|revision|>", " "))
    candidates = {**{s: n for n, s in _SENTENCE.items()}, W.GOOD_CRITIQUE: None}
    if t in candidates:
        return candidates[t]
    words = set(t.split())
    overlap = {s: len(_keywords(s) & words) for s in candidates}
    best = max(overlap.values())
    winners = [s for s, v in overlap.items() if v == best]
    return candidates[winners[0]] if best > 0 and len(winners) == 1 else None


# ---------------------------------------------------------------- rule-based revision
_OPENERS = sorted(W.POLITE_OPENERS + W.RUDE_OPENERS, key=len, reverse=True)
_FILLERS = sorted(W.FILLERS, key=len, reverse=True)


def split_response(response):
    """(opener, content, filler) of a response: known openers stripped from the front and fillers
    from the back (repeatedly, so a model's doubled opener is one opener), the rest is content."""
    text = W.normalize_response(response)
    openers, fillers = [], []
    changed = True
    while changed:
        changed = False
        for o in _OPENERS:
            if text == o or text.startswith(o + " "):
                openers.append(o)
                text, changed = text[len(o):].strip(), True
                break
        for f in _FILLERS:
            if text == f or text.endswith(" " + f):
                fillers.insert(0, f)
                text, changed = text[:len(text) - len(f)].strip(), True
                break
    return " ".join(openers), text, " ".join(fillers)


def rule_revise(prompt, response, principle, knows_facts=True):
    """Fix exactly one principle's violation by the world's rules (the corpus's revision rule):
    polite -> a polite opener; concise -> no filler; a content principle -> the correct content.
    A critic that does not know the knowledge base (knows_facts=False) cannot rewrite the content
    of a knowledge-base answer: it returns that content unchanged."""
    if principle is None:
        return W.normalize_response(response)
    check_principle(principle)
    req = W.parse_request(prompt)
    parts = split_response(response)
    if principle in W.CONTENT_PRINCIPLES and not knows_facts and req.family in KNOWLEDGE_FAMILIES:
        return W.normalize_response(response)
    return W.compose(*D.revise(req, parts, principle))


# ---------------------------------------------------------------- critics
def _check_lists(prompts, *others):
    if isinstance(prompts, str) or not hasattr(prompts, "__len__"):
        raise ValueError("prompts must be a list of strings (use critique/revise/compare for one item)")
    if not prompts:
        raise ValueError("no prompts: the list is empty")
    for name, xs in others:
        if isinstance(xs, str) or len(xs) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {name} is not a list of {len(prompts)}")


class Critic:
    """The interface every critic shares. Subclasses implement `violation_probs`, `free_critiques`
    and `revise_many`; the rest (focused critiques, comparisons, ensembles) is built from those."""

    name = "critic"
    description = ""

    # ---- what a subclass provides
    def violation_probs(self, prompts, responses, principle):
        """P(the response breaks `principle`) per item, in the critic's judgement."""
        raise NotImplementedError

    def free_critiques(self, prompts, responses):
        """The critic's own critique of each response: a principle name, or None for "good"."""
        raise NotImplementedError

    def revise_many(self, prompts, responses, principles):
        """Each response revised to fix its principle (None: unchanged)."""
        raise NotImplementedError

    # ---- built on those
    def critique_many(self, prompts, responses, principles=None):
        """Critiques per item. Under a principle (Bai et al. draw one per round) the critic looks at that
        principle first: it names it if it judges it broken, else it reports whatever else it finds."""
        _check_lists(prompts, ("responses", responses))
        free = self.free_critiques(prompts, responses)
        if principles is None:
            return free
        _check_lists(prompts, ("principles", principles))
        for p in principles:
            check_principle(p)
        out = list(free)
        for p in sorted(set(principles)):
            idx = [i for i, q in enumerate(principles) if q == p]
            probs = self.violation_probs([prompts[i] for i in idx], [responses[i] for i in idx], check_principle(p))
            for i, pr in zip(idx, probs):
                if pr >= 0.5:
                    out[i] = p
        return out

    def critique(self, prompt, response, principle=None):
        return self.critique_many([prompt], [response], None if principle is None else [principle])[0]

    def revise(self, prompt, response, principle):
        return self.revise_many([prompt], [response], [principle])[0]

    def compare_many(self, prompts, responses_a, responses_b, principles=None):
        """Soft AI-feedback labels: P(A better) per pair, ensembled (averaged) over `principles`
        (default: the whole constitution). Under one principle, with ok = 1 - P(breaks it),
        P(A better) = ok_A / (ok_A + ok_B): the two judgements normalised over the pair (0.5 if both break it).
        Taught in notebook 09 §6 (RL-CAI: preferences from AI feedback), where one pair is computed by hand and
        the notebook asserts it agrees."""
        _check_lists(prompts, ("responses_a", responses_a), ("responses_b", responses_b))
        principles = PRINCIPLE_NAMES if principles is None else [check_principle(p) for p in principles]
        if not principles:
            raise ValueError("no principles to compare under")
        total = [0.0] * len(prompts)
        for p in principles:
            ok_a = [1 - v for v in self.violation_probs(prompts, responses_a, p)]
            ok_b = [1 - v for v in self.violation_probs(prompts, responses_b, p)]
            for i, (a, b) in enumerate(zip(ok_a, ok_b)):
                total[i] += a / (a + b) if a + b > 0 else 0.5
        return [t / len(principles) for t in total]

    def compare_sampled(self, prompts, responses_a, responses_b, seed=0, principles=None):
        """Bai et al.'s labels: for each pair ONE principle drawn at random (random.Random(seed)) from
        `principles` (default: the whole constitution), and P(A better) under it alone.
        Returns (labels, the principle drawn for each pair). Taught in notebook 09 §6."""
        _check_lists(prompts, ("responses_a", responses_a), ("responses_b", responses_b))
        principles = PRINCIPLE_NAMES if principles is None else [check_principle(p) for p in principles]
        if not principles:
            raise ValueError("no principles to draw from")
        rng = random.Random(seed)
        drawn = [rng.choice(principles) for _ in prompts]
        labels = [0.5] * len(prompts)
        for q in sorted(set(drawn)):
            idx = [i for i, d in enumerate(drawn) if d == q]
            sub = [[xs[i] for i in idx] for xs in (prompts, responses_a, responses_b)]
            for i, pr in zip(idx, self.compare_many(*sub, principles=[q])):
                labels[i] = pr
        return labels, drawn

    def compare(self, prompt, a, b, principle=None):
        return self.compare_many([prompt], [a], [b], None if principle is None else [principle])[0]

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


class OracleCritic(Critic):
    """The world's rules standing in for a capable LLM. Not a model: it reads the gold rules
    (`world.violated_principles`) and revises by the corpus's revision rule. With knows_facts=False
    it knows every rule but not the knowledge base: it cannot judge or fix the content of
    look-up answers (the lookup and unknown families): "a critic that does not know a fact cannot fix it", measured."""

    def __init__(self, knows_facts=True, name=None):
        self.knows_facts = knows_facts
        self.name = name or ("oracle (rules, stand-in for a capable LLM)" if knows_facts
                             else "oracle without the knowledge base")
        self.description = "rule-based stand-in for a capable LLM, not a model"

    def violations(self, prompt, response):
        v = W.violated_principles(prompt, response)
        if not self.knows_facts and W.parse_request(prompt).family in KNOWLEDGE_FAMILIES:
            v = [p for p in v if p not in ("helpful", "honest")]
        return v

    def violation_probs(self, prompts, responses, principle):
        check_principle(principle)
        return [float(principle in self.violations(p, r)) for p, r in zip(prompts, responses)]

    def free_critiques(self, prompts, responses):
        _check_lists(prompts, ("responses", responses))
        out = []
        for p, r in zip(prompts, responses):
            v = self.violations(p, r)
            out.append(next((n for n in PRINCIPLE_NAMES if n in v), None))  # constitution order
        return out

    def revise_many(self, prompts, responses, principles):
        _check_lists(prompts, ("responses", responses), ("principles", principles))
        return [rule_revise(p, r, q, self.knows_facts) for p, r, q in zip(prompts, responses, principles)]


class ModelCritic(Critic):
    """A causal LM as critic and reviser, through the chat format it saw in pretraining.

    free critique   greedy continuation of "<|user|> P <|assistant|> R <|critique|>", parsed to a principle
    P(breaks p)     the critique sentence of p against "the answer is good .", scored:
                    P = exp(lp_p) / (exp(lp_p) + exp(lp_good)), lp = summed log-probability of the sentence
    revision        greedy continuation of "... <|critique|> C <|revision|>" up to <|end|>"""

    def __init__(self, model, tokenizer, name="model", max_new_tokens=32, batch_size=128):
        if model is None or tokenizer is None:
            raise ValueError("ModelCritic needs a model and its tokenizer")
        check_int("max_new_tokens", max_new_tokens)
        check_int("batch_size", batch_size)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.name, self.max_new_tokens, self.batch_size = name, max_new_tokens, batch_size
        self.description = f"{type(model).__name__} with {sum(p.numel() for p in model.parameters()):,} parameters"
        self._lp_cache = {}

    # ---- text in and out of the model
    def _context(self, prompt, response):
        return f"{W.chat_prompt(prompt)} {W.normalize_response(response)} <|critique|>"

    def _generate(self, contexts, stops):
        return chat.complete(self.model, self.tokenizer, contexts, self.max_new_tokens, stops,
                             batch_size=self.batch_size)

    @torch.no_grad()
    def continuation_logprobs(self, contexts, continuations):
        """Summed log-probability of each continuation after its context, (N,) tensor; a context too long
        for the model loses tokens from its front."""
        return chat.sequence_logprobs(self.model, self.tokenizer, contexts, continuations,
                                      batch_size=4 * self.batch_size, max_len=max_positions(self.model.config))

    def sentence_logprobs(self, prompts, responses):
        """(N, len(PRINCIPLES) + 1) log-probabilities of each principle's critique sentence and, last,
        of "the answer is good .", as the critique of each response (cached per prompt and response)."""
        sentences = [critique_sentence(n) for n in PRINCIPLE_NAMES] + [W.GOOD_CRITIQUE]
        todo = sorted({(p, W.normalize_response(r)) for p, r in zip(prompts, responses)} - set(self._lp_cache))
        if todo:
            ctx = [self._context(p, r) for p, r in todo for _ in sentences]
            cont = [f"{s} <|revision|>" for _ in todo for s in sentences]
            lp = self.continuation_logprobs(ctx, cont).view(len(todo), len(sentences))
            for key, row in zip(todo, lp):
                self._lp_cache[key] = row
        return torch.stack([self._lp_cache[(p, W.normalize_response(r))] for p, r in zip(prompts, responses)])

    # ---- the interface
    def violation_probs(self, prompts, responses, principle):
        j = PRINCIPLE_NAMES.index(check_principle(principle))
        lp = self.sentence_logprobs(prompts, responses)
        return torch.sigmoid(lp[:, j] - lp[:, -1]).tolist()

    def critique_texts(self, prompts, responses):
        """The critiques as the model writes them (greedy), before parsing."""
        _check_lists(prompts, ("responses", responses))
        return self._generate([self._context(p, r) for p, r in zip(prompts, responses)], chat.CRITIQUE_STOPS)

    def free_critiques(self, prompts, responses):
        return [parse_critique(t) for t in self.critique_texts(prompts, responses)]

    def revise_many(self, prompts, responses, principles):
        _check_lists(prompts, ("responses", responses), ("principles", principles))
        out = [W.normalize_response(r) for r in responses]
        idx = [i for i, p in enumerate(principles) if p is not None]
        if idx:
            ctx = [f"{self._context(prompts[i], responses[i])} {critique_sentence(principles[i])} <|revision|>"
                   for i in idx]
            revised = self._generate(ctx, chat.REVISION_STOPS)
            for i, r in zip(idx, revised):
                out[i] = W.normalize_response(r)
        return out


# ---------------------------------------------------------------- measuring critics
def critic_accuracy(critic, prompts, responses):
    """How well a critic's own critiques match the gold rules, on responses of any quality.

    accuracy: the critique names a principle the response breaks (any one of them, if several),
    or says "good" for a response that breaks none. Also per principle: recall (how often a
    broken principle is the one named, or judged broken when asked about it) and false alarms."""
    _check_lists(prompts, ("responses", responses))
    named = critic.free_critiques(prompts, responses)
    gold = [W.violated_principles(p, r) for p, r in zip(prompts, responses)]
    correct = [(n in g) if g else n is None for n, g in zip(named, gold)]
    out = {"accuracy": sum(correct) / len(correct), "n": len(correct),
           "flawless_called_good": metrics.rate([n is None for n, g in zip(named, gold) if not g]),
           "flawed_caught": metrics.rate([n in g for n, g in zip(named, gold) if g])}
    for p in PRINCIPLE_NAMES:
        probs = critic.violation_probs(prompts, responses, p)
        out[f"recall_{p}"] = metrics.rate([pr >= 0.5 for pr, g in zip(probs, gold) if p in g])
        out[f"false_alarm_{p}"] = metrics.rate([pr >= 0.5 for pr, g in zip(probs, gold) if p not in g])
    return out


# ---------------------------------------------------------------- SL-CAI: critique -> revision, repeated
def critique_revision_rounds(critic, prompts, responses, n_revisions=3, seed=0, principles=None):
    """Bai et al.'s supervised phase: each round draws a principle at random per response, the critic
    critiques under it, and a critique that names a principle is followed by a revision fixing it.
    `principles` restricts the constitution (default: all of it); a critique naming a principle outside
    it is ignored.

    Returns {"responses": [r_0, r_1, ..., r_n] (lists, r_0 the originals), "principles": drawn per round,
    "critiques": what the critic named per round (None = "good", no revision)}.
    Taught inline in notebook 09 §2 (Critique and revision, step by step); the notebook asserts they agree."""
    _check_lists(prompts, ("responses", responses))
    check_int("n_revisions", n_revisions, 0)
    names = PRINCIPLE_NAMES if principles is None else [check_principle(p) for p in principles]
    if not names:
        raise ValueError("no principles to draw from")
    rng = random.Random(seed)
    current = [W.normalize_response(r) for r in responses]
    history = {"responses": [current], "principles": [], "critiques": []}
    for _ in range(n_revisions):
        drawn = [rng.choice(names) for _ in prompts]
        named = [n if n in names else None for n in critic.critique_many(prompts, current, drawn)]
        current = critic.revise_many(prompts, current, named)
        history["principles"].append(drawn)
        history["critiques"].append(named)
        history["responses"].append(current)
    return history


def revision_rows(prompts, responses):
    """SFT rows {"prompt", "response"} from (final) revisions; empty revisions are dropped."""
    _check_lists(prompts, ("responses", responses))
    if not all(isinstance(r, str) for r in responses):
        raise ValueError("responses must be strings")
    return [{"prompt": p, "response": r} for p, r in zip(prompts, responses) if r.strip()]


# ---------------------------------------------------------------- AI preference labels (RL-CAI, RLAIF-DPO)
def _check_probs(probs):
    for p in probs:
        check_number("a label P(A better) (a probability in [0, 1])", p, 0, 1)


def hard_labels(probs):
    """Soft labels P(A better) -> hard ones: 1, 0, or 0.5 for an exact tie."""
    _check_probs(probs)
    return [1.0 if p > 0.5 else 0.0 if p < 0.5 else 0.5 for p in probs]


def label_gold_agreement(gold_a, gold_b, probs):
    """Agreement of labels P(A better) with the gold reward, over pairs whose gold differs:
    "hard" = share where the label's side is gold's (a tie counts half), "soft" = mean probability
    put on gold's side. Comparable with `preferences.gold_agreement` on annotators' labels."""
    if not len(gold_a) == len(gold_b) == len(probs):
        raise ValueError(f"need one gold reward of each side per label, got {len(gold_a)} gold_a, {len(gold_b)} "
                         f"gold_b and {len(probs)} labels")
    _check_probs(probs)
    decided = [(ga > gb, p) for ga, gb, p in zip(gold_a, gold_b, probs) if ga != gb]
    if not decided:
        raise ValueError("no pair has different gold rewards")
    hard = [1.0 if (p > 0.5) == a_better and p != 0.5 else 0.5 if p == 0.5 else 0.0 for a_better, p in decided]
    soft = [p if a_better else 1 - p for a_better, p in decided]
    return {"hard": sum(hard) / len(hard), "soft": sum(soft) / len(soft), "n": len(decided)}


def ai_preference_pairs(prompts, responses_a, responses_b, probs, soft=True, seed=0):
    """DPO pairs {"prompt", "chosen", "rejected", "p_chosen"} from AI labels P(A better).

    hard: A is chosen when P > 0.5 (exact ties dropped). soft: each pair's orientation is drawn with
    probability P -- in expectation the DPO loss with soft targets, P·(-log σ(βΔ)) + (1-P)·(-log σ(-βΔ))
    (conservative / label-smoothed DPO), so an unsure label pulls little either way."""
    _check_lists(prompts, ("responses_a", responses_a), ("responses_b", responses_b), ("probs", probs))
    rng = random.Random(seed)
    pairs = []
    for p, a, b, pr in zip(prompts, responses_a, responses_b, probs):
        if not 0.0 <= pr <= 1.0 or math.isnan(pr):
            raise ValueError(f"a label must be a probability in [0, 1], got {pr!r}")
        if a == b:
            continue
        a_first = rng.random() < pr if soft else pr > 0.5
        if not soft and pr == 0.5:
            continue
        chosen, rejected = (a, b) if a_first else (b, a)
        pairs.append({"prompt": p, "chosen": chosen, "rejected": rejected, "p_chosen": pr if a_first else 1 - pr})
    return pairs


# ---------------------------------------------------------------- the two phases, end to end
def sample_prompts(rows, n, seed=0, weights=None):
    """n prompts drawn (with replacement) from rows {"prompt", "family"}, families weighted as in the
    pretraining corpus (data.FAMILY_WEIGHTS): red-team (forbidden) requests and helpfulness requests mixed."""
    check_int("n", n)
    weights = D.FAMILY_WEIGHTS if weights is None else weights
    by_family = {f: [r["prompt"] for r in rows if r["family"] == f] for f in weights}
    families = [f for f in weights if by_family[f]]
    if not families or n < 1:
        raise ValueError("no prompts to sample from (or n < 1)")
    rng = random.Random(seed)
    return [rng.choice(by_family[rng.choices(families, weights=[weights[f] for f in families])[0]]) for _ in range(n)]


def sl_cai(model, tokenizer, critic, prompts, n_revisions=3, temperature=1.0, sft_steps=150, lr=5e-4, seed=0,
           progress=False):
    """The supervised phase end to end: `model` (helpful, not harmless) answers `prompts` (sampled at
    `temperature`), the critic critiques and revises n_revisions times, and a copy of `model` is
    fine-tuned on the final revisions. Returns (the SL-CAI model, log with "history", "sft", "seconds",
    "critic_calls" (critiques + revisions asked of the critic))."""
    _check_lists(prompts)
    cfg = sft.SFTConfig(steps=sft_steps, lr=lr, seed=seed)
    t0 = time.perf_counter()
    responses = chat.respond(model, tokenizer, list(prompts), temperature=temperature, seed=seed)
    history = critique_revision_rounds(critic, list(prompts), responses, n_revisions, seed=seed)
    policy = copy.deepcopy(model)
    log = sft.train_sft(policy, tokenizer, revision_rows(prompts, history["responses"][-1]), cfg, progress=progress)
    calls = n_revisions * len(prompts) + sum(n is not None for c in history["critiques"] for n in c)
    return policy, {"history": history, "sft": log, "seconds": time.perf_counter() - t0, "critic_calls": calls}


def sample_comparisons(model, tokenizer, prompts, k=4, temperature=1.0, seed=0):
    """k sampled responses per prompt, expanded into every pair of distinct responses: (prompts, a, b)."""
    _check_lists(prompts)
    check_int("k (responses per prompt, to make pairs)", k, 2)
    check_number("temperature (> 0: greedy responses are all the same)", temperature, 0, low_open=True)
    samples = [chat.respond(model, tokenizer, list(prompts), temperature=temperature, seed=seed + j) for j in range(k)]
    out_p, out_a, out_b = [], [], []
    for i, p in enumerate(prompts):
        for a, b in itertools.combinations(sorted({s[i] for s in samples}), 2):
            out_p.append(p)
            out_a.append(a)
            out_b.append(b)
    return out_p, out_a, out_b


def soft_bradley_terry_loss(rewards_a, rewards_b, p_a):
    """Mean of -(p log σ(r_a - r_b) + (1 - p) log σ(r_b - r_a)): the Bradley-Terry loss with a soft target
    p = P(A better) (binary cross-entropy on the pair). p = 1 everywhere is `reward_model.bradley_terry_loss`."""
    if not rewards_a.shape == rewards_b.shape == p_a.shape or rewards_a.dim() != 1 or rewards_a.numel() == 0:
        raise ValueError(f"need three (N,) tensors of one shape with N > 0, got {tuple(rewards_a.shape)}, "
                         f"{tuple(rewards_b.shape)} and {tuple(p_a.shape)}")
    d = rewards_a - rewards_b
    return -(p_a * torch.nn.functional.logsigmoid(d) + (1 - p_a) * torch.nn.functional.logsigmoid(-d)).mean()


def train_preference_model(pm, rows, epochs=30, lr=1e-2, batch_size=64, seed=0, features=None):
    """Bai et al.'s preference model, with the course's frozen-trunk reward model: train `pm.head` on rows
    {"prompt", "chosen", "rejected", "p_chosen"} (p_chosen = P(chosen better): 1.0 for a human label, the AI's
    soft label otherwise) with `soft_bradley_terry_loss`, the trunk's features cached once (as
    `reward_model.train_reward_model` with its frozen trunk). The head is reset to zeros first; returns
    {"losses": per step, "seconds", "features"}: pass those features back (features=...) to train another head
    on the same pairs with other labels without recomputing them. Taught inline in notebook 09 §6; the notebook asserts they agree."""
    check_int("epochs", epochs)
    check_int("batch_size", batch_size)
    check_number("lr", lr, 0, low_open=True)
    if not rows:
        raise ValueError("no preference rows to train on")
    R._check_rows(rows, "preference")
    _check_probs([r.get("p_chosen", float("nan")) for r in rows])
    t0 = time.perf_counter()
    if features is None:
        features = R._features(pm, rows, "chosen"), R._features(pm, rows, "rejected")  # (N, H) each, no gradients
    fa, fb = features
    if not len(fa) == len(fb) == len(rows):
        raise ValueError(f"features are for {len(fa)} pairs but there are {len(rows)} rows: pass the features "
                         "returned by a run on these same pairs")
    target = torch.tensor([r["p_chosen"] for r in rows], dtype=fa.dtype)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    torch.nn.init.zeros_(pm.head.weight)
    torch.nn.init.zeros_(pm.head.bias)
    opt = torch.optim.AdamW(pm.head.parameters(), lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(epochs):
        order = rng.sample(range(len(rows)), len(rows))
        for i in range(0, len(order), batch_size):
            idx = torch.tensor(order[i:i + batch_size])
            loss = soft_bradley_terry_loss(pm.head(fa[idx]).squeeze(-1), pm.head(fb[idx]).squeeze(-1), target[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    pm.eval()
    return {"losses": losses, "seconds": time.perf_counter() - t0, "features": features}


def rlaif_dpo(policy, tokenizer, critic, prompts, k=4, temperature=1.0, soft=True, beta=0.1, steps=40, batch_size=64,
              lr=1e-4, seed=0, label_smoothing=0.0, progress=False):
    """RLAIF-DPO, a named variant of the AI-feedback phase: DPO in place of a preference model + PPO: k samples per prompt from
    `policy`, every distinct pair labelled by the critic (soft labels ensembled over the constitution),
    then `course_lib.dpo.train_dpo` on a copy of `policy` (the reference is `policy` itself).
    Returns (the RLAIF-DPO model, log with "pairs", "probs", "ai_labels", "dpo", "seconds")."""
    cfg = dpo.DPOConfig(beta=beta, steps=steps, batch_size=batch_size, lr=lr, seed=seed, label_smoothing=label_smoothing)
    t0 = time.perf_counter()
    p, a, b = sample_comparisons(policy, tokenizer, prompts, k=k, temperature=temperature, seed=seed)
    if not p:
        raise ValueError("every sampled response was identical: no pairs to label (raise temperature or k)")
    probs = critic.compare_many(p, a, b)
    pairs = ai_preference_pairs(p, a, b, probs, soft=soft, seed=seed)
    model = copy.deepcopy(policy)
    log = dpo.train_dpo(model, tokenizer, pairs, cfg, progress=progress, desc="RLAIF-DPO")
    return model, {"prompts": p, "a": a, "b": b, "probs": probs, "pairs": pairs, "ai_labels": len(probs), "dpo": log,
                   "seconds": time.perf_counter() - t0}


CRITIC_KINDS = ("self", "strong", "oracle", "oracle_no_facts", "hf")


def make_critic(kind, tokenizer=None, self_model=None, strong_model=None, hf_model=None):
    """A critic by notebook parameter: "self" (self_model), "strong" (strong_model), "oracle", "oracle_no_facts",
    or "hf" (hf_model: any Hugging Face causal LM, loaded by the caller, e.g. `checkpoints.load_critic(path)`)."""
    if kind not in CRITIC_KINDS:
        raise ValueError(f"unknown critic {kind!r}; choose one of {', '.join(CRITIC_KINDS)}")
    if kind == "oracle":
        return OracleCritic()
    if kind == "oracle_no_facts":
        return OracleCritic(knows_facts=False)
    model = {"self": self_model, "strong": strong_model, "hf": hf_model}[kind]
    if model is None or tokenizer is None:
        raise ValueError(f"critic {kind!r} needs {kind}_model=... and tokenizer=...: "
                         "load them with checkpoints.get(name) / checkpoints.load_model(path)")
    name = {"self": "self (the course model)", "strong": "strong (course model, trained longer)",
            "hf": getattr(model, "name_or_path", None) or "hf"}[kind]
    return ModelCritic(model, tokenizer, name=name)
