"""The world's data, generated deterministically: python -m course_lib.data

Writes under data/ (transcripts in the world's chat template, `world.chat_text`):
    pretrain.jsonl      {"text"}: assistant transcripts mixing good and bad behaviour at the rates in
                        BASE_MIX, plain facts, and critique-and-revision passages
    sft.jsonl           {"prompt", "response"}: demonstrations, correct under the gold reward (helpful,
                        honest, harmless, coherent), style varying (SFT_MIX)
    sft_noisy.jsonl     {"prompt", "response", "corrupted"}: ten times more, NOISE_RATE of them drawn
                        from the pretraining behaviour mix instead
    prompts.jsonl       {"prompt", "family"}: training prompts for preferences and RL
    eval.jsonl          {"prompt", "family", "split", "seen"}: held-out prompts no training file contains.
                        split "main": one per request seen in training, in a training phrasing;
                        "hard": arithmetic pairs never seen at all; "novel": one per seen request in a
                        phrasing no training file uses (world.NOVEL_TEMPLATES); "safety": forbidden and
                        look-alike prompts, two more per seen request and three per request never seen
                        (a combination of modifier and noun no training file contains; seen=False)
    README.md           the data card: every file's measured rates of each behaviour and style
    tokenizer/          a word-level tokenizer trained on the corpus, as a transformers fast tokenizer
"""
import hashlib
import json
import random
import sys
from pathlib import Path

from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from . import world as W
from .paths import DATA_DIR

SEED = 0
N_CHAT, N_FACTS, N_CRITIQUE = 6000, 1500, 900
N_SFT, NOISY_FACTOR, NOISE_RATE = 400, 10, 0.5
FAMILY_WEIGHTS = {"arithmetic": 0.25, "lookup": 0.3, "unknown": 0.15, "howto": 0.15, "forbidden": 0.15}
HARD_FRACTION = 0.2  # of arithmetic pairs, never seen in any training file
TRAIN_TEMPLATES = (0, 1, 2)  # the phrasings training files use; world.NOVEL_TEMPLATES are held out


def unseen_things():
    """The composed forbidden and look-alike things no training file contains: 12 of each, chosen so
    that every noun and every modifier still appears in training in other combinations."""
    nouns = list(W.DANGEROUS_NOUNS)
    out = {f"a {m} {n}" for i, n in enumerate(nouns) for j, m in enumerate(W.HARMFUL_MODIFIERS) if (i + j) % 2 == 0}
    out |= {f"a {m} {n}" for i, n in enumerate(nouns) for j, m in enumerate(W.BENIGN_MODIFIERS) if (i + j) % 5 < 2}
    return out


UNSEEN_THINGS = unseen_things()

BASE_MIX = {  # how the pretraining corpus's assistant behaves
    "opener": {"rude": 0.45, "neutral": 0.35, "polite": 0.20},
    "filler": 0.40,
    "arithmetic_wrong": 0.40,
    "lookup_wrong": 0.20, "lookup_idk": 0.15,
    "unknown_invent": 0.65,
    "howto_refuse": 0.30, "lookalike_refuse": 0.60,
    "forbidden_comply": 0.65,
    "coherent": False,  # a polite opener may precede a refusal ("of course ! sorry , ...": incoherent)
}
SFT_MIX = {  # demonstrations: always correct content, style as real demonstrators vary it
    "opener": {"rude": 0.0, "neutral": 0.5, "polite": 0.5},
    "filler": 0.30,
    "arithmetic_wrong": 0.0, "lookup_wrong": 0.0, "lookup_idk": 0.0, "unknown_invent": 0.0,
    "howto_refuse": 0.0, "lookalike_refuse": 0.0, "forbidden_comply": 0.0,
    "coherent": True,  # demonstrators never promise help and then refuse: a refusal opens with no opener
}
FILES = ["pretrain.jsonl", "sft.jsonl", "sft_noisy.jsonl", "prompts.jsonl", "eval.jsonl"]
SCHEMAS = {  # file -> required fields and their types
    "pretrain.jsonl": {"text": str},
    "sft.jsonl": {"prompt": str, "response": str},
    "sft_noisy.jsonl": {"prompt": str, "response": str, "corrupted": bool},
    "prompts.jsonl": {"prompt": str, "family": str},
    "eval.jsonl": {"prompt": str, "family": str, "split": str, "seen": bool},
}


# ---------------------------------------------------------------- splits
def splits(seed=SEED):
    """(train combos per request, eval rows, hard arithmetic pairs), fixed by seed.

    A request is seen (in training, in 6 of its 9 training phrasings) unless it is a hard arithmetic
    pair or one of UNSEEN_THINGS; see the module docstring for the eval splits."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(W.N_MAX + 1) for b in range(W.N_MAX + 1)]
    hard = set(rng.sample(pairs, int(HARD_FRACTION * len(pairs))))
    combos = [(t, tone) for t in TRAIN_TEMPLATES for tone in range(3)]
    novel = [(t, tone) for t in W.NOVEL_TEMPLATES for tone in range(3)]
    train, evals = {}, []

    def row(req, tc, split, seen=True):
        return {"prompt": W.format_prompt(req, *tc), "family": req.family, "split": split, "seen": seen}

    for req in W.all_requests():
        c = combos[:]
        rng.shuffle(c)
        if req.family == "arithmetic" and (req.a, req.b) in hard:
            evals.append(row(req, c[0], "hard", seen=False))
            continue
        if req.thing in UNSEEN_THINGS:
            evals += [row(req, tc, "safety", seen=False) for tc in c[:3]]
            continue
        evals.append(row(req, c[0], "main"))
        evals.append(row(req, rng.choice(novel), "novel"))
        n_eval = 1
        if req.family == "forbidden" or req.lookalike:
            evals += [row(req, tc, "safety") for tc in c[1:3]]
            n_eval = 3
        train[req] = c[n_eval:]
    return train, evals, hard


def _pick(rng, probs):
    return rng.choices(list(probs), weights=list(probs.values()))[0]


def _content(req, rng, mix):
    """Response content under a behaviour mix."""
    f = req.family
    if f == "arithmetic":
        if rng.random() < mix["arithmetic_wrong"]:
            wrong = rng.choice([s for s in range(2 * W.N_MAX + 1) if s != req.a + req.b])
            return f"{req.a} plus {req.b} is {wrong} ."
    elif f == "lookup":
        u = rng.random()
        if u < mix["lookup_wrong"]:
            right = W.FACTS[(req.entity, req.attribute)]
            wrong = rng.choice([v for v in W.ATTRIBUTES[req.attribute] if v != right])
            return f"the {req.attribute} of {req.entity} is {wrong} ."
        if u < mix["lookup_wrong"] + mix["lookup_idk"]:
            return f"i do not know the {req.attribute} of {req.entity} ."
    elif f == "unknown":
        if rng.random() < mix["unknown_invent"]:
            return f"the {req.attribute} of {req.entity} is {rng.choice(W.ATTRIBUTES[req.attribute])} ."
    elif f == "howto":
        p = mix["lookalike_refuse"] if req.lookalike else mix["howto_refuse"]
        if rng.random() < p:
            return rng.choice(W.REFUSALS)
    elif f == "forbidden":
        if rng.random() < mix["forbidden_comply"]:
            return f"to make {req.thing} , {W.FORBIDDEN[req.thing]} ."
        return rng.choice(W.REFUSALS)
    return W.answer_content(req)


def sample_parts(req, rng, mix):
    """(opener, content, filler) of one response drawn from a behaviour mix."""
    tone = _pick(rng, mix["opener"])
    opener = {"rude": rng.choice(W.RUDE_OPENERS), "polite": rng.choice(W.POLITE_OPENERS), "neutral": ""}[tone]
    filler = rng.choice(W.FILLERS) if rng.random() < mix["filler"] else ""
    content = _content(req, rng, mix)
    if mix["coherent"] and tone == "polite" and W.is_refusal(content):
        opener = ""  # the apology (or its absence) is the refusal's courtesy
    return opener, content, filler


def revise(req, parts, principle):
    """Fix one principle's violation in a response given as (opener, content, filler).

    polite or courteous -> a polite opener, or for a refusal no opener and the apology; concise -> no filler and one opener; a content principle -> the correct
    content, keeping the response's courtesy: no promising opener before a refusal, and a polite opener
    where an apologetic refusal is replaced by an answer."""
    if principle not in W.PRINCIPLE_NAMES:
        raise ValueError(f"unknown principle {principle!r}; the constitution has {W.PRINCIPLE_NAMES}")
    opener, content, filler = parts
    refusing = W.is_refusal(content)
    if principle in ("polite", "courteous"):  # kind, and courteous: an opener, or for a refusal the apology
        opener, content = ("", W.REFUSALS[0]) if refusing else (W.POLITE_OPENERS[0], content)
    elif principle == "concise":
        opener, filler = (W.sentences(opener) or [""])[0], ""
    elif principle in W.CONTENT_PRINCIPLES:
        apologised = refusing and W.has_phrase(content, "sorry")
        content = W.answer_content(req)
        if W.is_refusal(content) and any(o in W.POLITE_OPENERS for o in W.sentences(opener)):
            opener = ""
        elif apologised and not opener and not W.is_refusal(content):
            opener = W.POLITE_OPENERS[0]  # the courtesy the apology carried moves to the opener
    return opener, content, filler


def _critique(req, prompt, parts, rng, accuracy=0.85):
    """A critique passage: an accurate critique (most of the time) and the revision it implies."""
    response = W.compose(*parts)
    violated = W.violated_principles(req, response)
    names = [p["name"] for p in W.PRINCIPLES]
    if rng.random() < accuracy:
        principle = rng.choice(violated) if violated else None
    else:  # a mistaken critic: names a principle at random, or calls a flawed answer good
        principle = rng.choice(names + [None])
    critique = next(p["critique"] for p in W.PRINCIPLES if p["name"] == principle) if principle else W.GOOD_CRITIQUE
    revision = W.compose(*revise(req, parts, principle)) if principle else response
    return W.critique_text(prompt, response, critique, revision)


def _train_requests(train, rng, n):
    reqs = list(train)
    by_family = {f: [r for r in reqs if r.family == f] for f in FAMILY_WEIGHTS}
    out = []
    for _ in range(n):
        f = _pick(rng, FAMILY_WEIGHTS)
        r = rng.choice(by_family[f])
        out.append((r, W.format_prompt(r, *rng.choice(train[r]))))
    return out


def generate(seed=SEED):
    """Every data file's rows: {file name: [row, ...]}."""
    rng = random.Random(seed)
    train, evals, hard = splits(seed)
    pretrain = [{"text": W.chat_text(p, W.compose(*sample_parts(r, rng, BASE_MIX)))}
                for r, p in _train_requests(train, rng, N_CHAT)]
    facts = []
    for _ in range(N_FACTS):  # plain text: the world's facts, always true
        kind = rng.random()
        if kind < 0.5:
            (e, at), v = rng.choice(sorted(W.FACTS.items()))
            facts.append(f"the {at} of {e} is {v} .")
        elif kind < 0.8:
            a, b = rng.choice([(a, b) for a in range(W.N_MAX + 1) for b in range(W.N_MAX + 1) if (a, b) not in hard])
            facts.append(f"{a} plus {b} is {a + b} .")
        else:
            t = rng.choice(sorted(set(W.HOWTO) - UNSEEN_THINGS))
            facts.append(f"to make {t} , {W.HOWTO[t]} .")
    pretrain += [{"text": t} for t in facts]
    pretrain += [{"text": _critique(r, p, sample_parts(r, rng, BASE_MIX), rng)}
                 for r, p in _train_requests(train, rng, N_CRITIQUE)]
    rng.shuffle(pretrain)

    sft = [{"prompt": p, "response": W.compose(*sample_parts(r, rng, SFT_MIX))}
           for r, p in _train_requests(train, rng, N_SFT)]
    noisy = []
    for r, p in _train_requests(train, rng, NOISY_FACTOR * N_SFT):
        corrupted = rng.random() < NOISE_RATE
        noisy.append({"prompt": p, "response": W.compose(*sample_parts(r, rng, BASE_MIX if corrupted else SFT_MIX)),
                      "corrupted": corrupted})
    prompts = [{"prompt": W.format_prompt(r, *tc), "family": r.family} for r in train for tc in train[r]]
    return {"pretrain.jsonl": pretrain, "sft.jsonl": sft, "sft_noisy.jsonl": noisy, "prompts.jsonl": prompts,
            "eval.jsonl": evals}


# ---------------------------------------------------------------- files
def dumps_jsonl(rows):
    """Rows as JSONL text, keys sorted (so a regenerated file is byte-identical)."""
    return "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)


def build_tokenizer(texts):
    """A word-level tokenizer trained on `texts`, wrapped as a transformers fast tokenizer."""
    specials = ["<|pad|>", "<|unk|>", *W.ROLE_TOKENS]
    tok = Tokenizer(models.WordLevel(unk_token="<|unk|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1,
                                                             show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", unk_token="<|unk|>",
                                   eos_token="<|end|>", additional_special_tokens=W.ROLE_TOKENS,
                                   padding_side="right", model_max_length=96)


def build_bpe_tokenizer(texts, vocab_size=600):
    """A byte-level BPE tokenizer trained on `texts`, as a real model's is: no pad token, no role tokens
    (<|user|> is cut into pieces), words after a space are other tokens ("Ġ3") than words alone ("3").

    Notebook 05 shows what it does to the chat template; the tests train one for a tiny Llama, so that
    the alignment notebooks run on a model whose tokenizer is not the course's (`chat.prepare_tokenizer`)."""
    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty list of strings (wrap a single text in a list)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def tokenizer_texts(files):
    """Every text the tokenizer must cover: the corpus, demonstrations, prompts and all world words."""
    texts = [r["text"] for r in files["pretrain.jsonl"]]
    texts += [r["prompt"] + " " + r["response"] for r in files["sft.jsonl"] + files["sft_noisy.jsonl"]]
    texts += [r["prompt"] for r in files["eval.jsonl"] + files["prompts.jsonl"]]
    texts += [p["text"] + " " + p["critique"] for p in W.PRINCIPLES] + [W.GOOD_CRITIQUE]
    texts += [" ".join(map(str, range(2 * W.N_MAX + 1)))] + [" ".join(v) for v in W.ATTRIBUTES.values()]
    return texts


def _style(prompt, response):
    g = W.gold_reward(prompt, response)
    return g, {"rude": g.polite == 0, "incoherent": "incoherent" in g.failures,
               "courteous": g.polite == 1, "neutral": "discourteous" in g.failures,
               "filler": any(f in W.sentences(response) for f in W.FILLERS)}


def data_card(files):
    """The data card (data/README.md): each corpus's measured rates of behaviour and style under the
    gold reward, and the held-out splits; written by write_all, so it cannot drift from the data."""
    corpora = {
        "pretraining transcripts": [W.split_transcript(r["text"]) for r in files["pretrain.jsonl"]
                                    if r["text"].startswith("<|user|>") and "<|critique|>" not in r["text"]],
        "SFT demonstrations (sft.jsonl)": [(r["prompt"], r["response"]) for r in files["sft.jsonl"]],
        "noisy SFT, clean rows": [(r["prompt"], r["response"]) for r in files["sft_noisy.jsonl"] if not r["corrupted"]],
        "noisy SFT, corrupted rows": [(r["prompt"], r["response"]) for r in files["sft_noisy.jsonl"] if r["corrupted"]],
    }
    cols = ["rows", "helpful", "invented facts (unknown)", "harmful compliance (forbidden)",
            "over-refusal (look-alikes)", "courteous", "neutral", "rude", "incoherent", "filler", "at GOLD_MAX"]
    lines = ["| corpus | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for name, pairs in corpora.items():
        scored = [(W.parse_request(p), *_style(p, r)) for p, r in pairs]
        def share(xs):
            xs = list(xs)
            return f"{sum(xs) / len(xs):.1%}" if xs else "—"
        cells = [f"{len(scored):,}", share(g.helpful == 1 for _, g, _ in scored),
                 share(g.honest == 0 for q, g, _ in scored if q.family == "unknown"),
                 share(g.harmless == 0 for q, g, _ in scored if q.family == "forbidden"),
                 share("needless_refusal" in g.failures for q, g, _ in scored if q.lookalike)]
        cells += [share(st[k] for _, _, st in scored) for k in ("courteous", "neutral", "rude", "incoherent", "filler")]
        cells.append(share(g.total == W.GOLD_MAX for _, g, _ in scored))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    evals = files["eval.jsonl"]
    split_lines = ["| split | prompts | forbidden prompts (requests) | look-alike prompts (requests) | "
                   "requests never in training |", "|---|---|---|---|---|"]
    for split in ("main", "novel", "hard", "safety"):
        rows = [e for e in evals if e["split"] == split]
        reqs = [W.parse_request(e["prompt"]) for e in rows]
        forb = [q for q in reqs if q.family == "forbidden"]
        look = [q for q in reqs if q.lookalike]
        unseen = {q for q, e in zip(reqs, rows) if not e["seen"]}
        split_lines.append(f"| {split} | {len(rows)} | {len(forb)} ({len(set(forb))}) | {len(look)} ({len(set(look))}) "
                           f"| {len(unseen)} |")
    return "\n".join([
        "# data/", "",
        "Data the course generates itself (no downloads), written deterministically by "
        "`python -m course_lib.data` and checked by a test against a fresh regeneration. "
        "This card is written by the same command: every rate below is measured on the files with the gold reward "
        "(`course_lib.world`), never typed.", "",
        "## Behaviour and style of each corpus", "",
        "Rates are shares of rows; invented facts, harmful compliance and over-refusal are shares of the rows of "
        "their family. Courteous: a polite opener, or an apology when refusing; neutral: neither; incoherent: "
        "a promise of help followed by a refusal (no courtesy).", "",
        *lines, "",
        "## Held-out prompts (eval.jsonl)", "",
        "No prompt here appears in any training file. `novel` uses phrasings no training file uses; `hard` holds "
        "arithmetic pairs never seen; `safety` holds forbidden and look-alike requests, a third or more of them "
        "combinations of modifier and noun that appear in no training file (`seen` false).", "",
        *split_lines, ""])


def write_all(out_dir=DATA_DIR, seed=SEED):
    """Generate every data file and the tokenizer into out_dir; returns {file: sha256}."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = generate(seed)
    digests = {}
    for name, rows in files.items():
        text = dumps_jsonl(rows)
        (out_dir / name).write_text(text)
        digests[name] = hashlib.sha256(text.encode()).hexdigest()
    card = data_card(files)
    (out_dir / "README.md").write_text(card)
    digests["README.md"] = hashlib.sha256(card.encode()).hexdigest()
    tok = build_tokenizer(tokenizer_texts(files))
    tok.save_pretrained(str(out_dir / "tokenizer"))
    return digests


def read_jsonl(path, schema=None):
    """Rows of a JSONL file; a malformed row raises ValueError naming the file and line."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; regenerate the data with: python -m course_lib.data")
    schema = SCHEMAS.get(path.name) if schema is None else schema
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}); fix the line or regenerate with "
                             "python -m course_lib.data") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: each line must be a JSON object, got {type(row).__name__}")
        for key, typ in (schema or {}).items():
            if key not in row:
                raise ValueError(f"{path}:{lineno}: missing field {key!r} (a row needs {sorted(schema)})")
            if not isinstance(row[key], typ):
                raise ValueError(f"{path}:{lineno}: field {key!r} must be {typ.__name__}, "
                                 f"got {type(row[key]).__name__}")
        rows.append(row)
    return rows


def load(name, data_dir=DATA_DIR):
    """A data file as a `datasets.Dataset`, validated row by row first ('sft' or 'sft.jsonl')."""
    name = name if name.endswith(".jsonl") else name + ".jsonl"
    return Dataset.from_list(read_jsonl(Path(data_dir) / name))


def load_tokenizer(data_dir=DATA_DIR):
    """The course's word-level tokenizer, shipped with the data."""
    path = Path(data_dir) / "tokenizer"
    if not (path / "tokenizer.json").exists():
        raise FileNotFoundError(f"no tokenizer in {path}; regenerate the data with: python -m course_lib.data")
    return AutoTokenizer.from_pretrained(str(path))


def main(argv=None):
    digests = write_all()
    for name, digest in digests.items():
        n = len((DATA_DIR / name).read_text().splitlines())
        print(f"{name:20s} {n:6d} rows  sha256 {digest[:12]}")
    print(f"tokenizer/            {len(load_tokenizer())} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
