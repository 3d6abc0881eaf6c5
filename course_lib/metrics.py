"""Ask a model for responses and score them with the world's gold reward."""
import statistics

import torch

from . import world as W
from .data import chat_prompt
from .model import generate_tokens, max_positions
from .training import collate


def respond(model, tokenizer, prompts, temperature=0.0, max_new_tokens=40, batch_size=64, seed=0):
    """The model's response text to each prompt (greedy at temperature 0, sampled otherwise).

    A response ends at <|end|>, or where a completion engine starts a critique (<|critique|>)."""
    stops = tokenizer.convert_tokens_to_ids(["<|end|>", "<|critique|>"])
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i:i + batch_size]
        encoded = [tokenizer(chat_prompt(p), add_special_tokens=False).input_ids for p in chunk]
        ids, _, mask = collate([(e, e) for e in encoded], tokenizer.pad_token_id, left_pad=True)
        room = max_positions(model.config) - ids.shape[1]
        full = generate_tokens(model, ids, min(max_new_tokens, room), temperature=temperature,
                               eos_token_id=stops, attention_mask=mask, generator=gen)
        for row in full[:, ids.shape[1]:].tolist():
            cut = min([row.index(s) for s in stops if s in row], default=len(row))
            out.append(tokenizer.decode(row[:cut], skip_special_tokens=False).strip())
    return out


def score(prompts, responses):
    """Per-response gold scores: a list of dicts with prompt, response, family, total, breakdown, failures."""
    rows = []
    for p, r in zip(prompts, responses):
        g = W.gold_reward(p, r)
        rows.append({"prompt": p, "response": r, "family": W.parse_request(p).family, "total": g.total,
                     **g.breakdown(), "failures": g.failures})
    return rows


def summarize(rows):
    """Mean gold total and breakdown, rate of each failure kind, and mean total per family."""
    n = len(rows)
    out = {"gold_reward": statistics.fmean(r["total"] for r in rows), "n": n}
    for k in W.WEIGHTS:
        out[k] = statistics.fmean(r[k] for r in rows)
    for f in W.FAILURE_KINDS:
        out[f"rate_{f}"] = sum(f in r["failures"] for r in rows) / n
    for fam in sorted({r["family"] for r in rows}):
        sub = [r["total"] for r in rows if r["family"] == fam]
        out[f"gold_{fam}"] = statistics.fmean(sub)
    return out


def evaluate(model, tokenizer, prompts, temperature=0.0, seed=0, max_new_tokens=40):
    """(rows, summary) of the model's responses to prompts under the gold reward."""
    responses = respond(model, tokenizer, prompts, temperature=temperature, seed=seed, max_new_tokens=max_new_tokens)
    rows = score(prompts, responses)
    return rows, summarize(rows)


RATE_OF = {  # failure kind -> the family it is measured on (None = every family)
    "wrong_answer": "arithmetic", "invented_fact": "unknown", "harmful_compliance": "forbidden",
    "needless_refusal": "howto", "rude": None, "verbose": None,
}


def behaviour_rates(rows):
    """Each failure kind's rate among the requests where it can happen (e.g. invented facts among unknowns)."""
    out = {}
    for kind, fam in RATE_OF.items():
        sub = [r for r in rows if fam is None or r["family"] == fam]
        out[kind] = sum(kind in r["failures"] for r in sub) / len(sub) if sub else float("nan")
    return out


def split_transcript(text):
    """(prompt, response) of a '<|user|> P <|assistant|> R <|end|>' transcript."""
    if not text.startswith("<|user|> ") or " <|assistant|> " not in text:
        raise ValueError(f"not a chat transcript: {text[:60]!r}")
    prompt, rest = text[len("<|user|> "):].split(" <|assistant|> ", 1)
    return prompt, rest.split(" <|critique|>")[0].replace("<|end|>", "").strip()
