"""Simulated annotators and the preference data they produce.

Annotator i prefers response A over B with probability

    P(A > B) = sigma( (g_A - g_B) / tau_i + bias_i(A) - bias_i(B) )

where g is the gold reward, tau_i the annotator's noise and bias_i a personal taste that has
nothing to do with quality (one likes long answers, one likes polite words whatever the content).
K-way rankings are drawn from the same utilities (Plackett-Luce) and expanded into all
K(K-1)/2 pairs, grouped per prompt, as InstructGPT did.
"""
import itertools
import math
import numbers
import random
from dataclasses import dataclass

from . import world as W


def _check_text(text):
    if not isinstance(text, str):
        raise ValueError(f"a response must be a string, got {type(text).__name__}")


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def n_words(text):
    _check_text(text)
    return len(text.split())


def n_polite_words(text):
    _check_text(text)
    return sum(W.has_phrase(text, m) for m in W.POLITE_MARKERS)


BIASES = {
    "none": lambda text: 0.0,
    "length": n_words,
    "polite_words": n_polite_words,
}


@dataclass(frozen=True)
class Annotator:
    name: str
    tau: float  # noise: larger = closer to a coin flip
    bias: str = "none"  # which feature the annotator likes regardless of quality
    bias_weight: float = 0.0  # logit added per unit of that feature

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"an annotator needs a non-empty name, got {self.name!r}")
        if not _is_real(self.tau) or self.tau <= 0:
            raise ValueError(f"tau must be a finite number > 0 (the annotator's noise: small = careful, "
                             f"large = close to a coin flip), got {self.tau!r}")
        if self.bias not in BIASES:
            raise ValueError(f"unknown bias {self.bias!r}: choose one of {sorted(BIASES)}")
        if not _is_real(self.bias_weight):
            raise ValueError(f"bias_weight must be a finite number (0 = no bias), got {self.bias_weight!r}")

    def utility(self, prompt, response):
        g = W.gold_reward(prompt, response).total
        return g / self.tau + self.bias_weight * BIASES[self.bias](response)

    def p_prefers(self, prompt, a, b):
        """P(this annotator prefers a over b)."""
        return 1.0 / (1.0 + math.exp(-(self.utility(prompt, a) - self.utility(prompt, b))))

    def compare(self, prompt, a, b, rng):
        """True if the annotator picks a over b (one noisy draw)."""
        return rng.random() < self.p_prefers(prompt, a, b)

    def rank(self, prompt, responses, rng):
        """A full ranking (best first) drawn from the Plackett-Luce model of the same utilities."""
        if not isinstance(responses, (list, tuple)) or not responses:
            raise ValueError(f"rank needs a non-empty list of responses, got {responses!r}")
        remaining = list(range(len(responses)))
        u = [self.utility(prompt, r) for r in responses]
        order = []
        while remaining:
            weights = [math.exp(u[i] - max(u[j] for j in remaining)) for i in remaining]
            pick = rng.choices(remaining, weights=weights)[0]
            order.append(pick)
            remaining.remove(pick)
        return order


ANNOTATORS = [
    Annotator("careful", tau=0.3),
    Annotator("hasty", tau=0.8),
    Annotator("likes_long", tau=0.4, bias="length", bias_weight=0.25),
    Annotator("likes_polite", tau=0.4, bias="polite_words", bias_weight=1.5),
]


def label_pairs(annotator, prompt, responses, rng):
    """Pairs from a K-way ranking of `responses`: all K(K-1)/2 (chosen, rejected), distinct texts only."""
    if not isinstance(annotator, Annotator):
        raise ValueError(f"annotator must be a preferences.Annotator, got {type(annotator).__name__}")
    if not isinstance(responses, (list, tuple)) or len(responses) < 2:
        raise ValueError(f"label_pairs needs a list of at least 2 responses (a comparison needs two), "
                         f"got {responses!r}")
    order = annotator.rank(prompt, responses, rng)
    pairs = []
    for i, j in itertools.combinations(range(len(order)), 2):
        a, b = responses[order[i]], responses[order[j]]
        if a != b:
            pairs.append((a, b))
    return pairs


def collect(prompts, responses, annotators=ANNOTATORS, seed=0):
    """Preference rows from K responses per prompt, each prompt ranked by one annotator (round robin).

    responses[i] is the list of K responses to prompts[i]; K = 2 gives plain pairwise comparisons.
    Rows: prompt, chosen, rejected, annotator, group (the prompt's index), gold_chosen, gold_rejected."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} response lists")
    if not prompts:
        raise ValueError("collect needs at least one prompt (with its list of responses)")
    annotators = list(annotators)
    if not annotators or not all(isinstance(a, Annotator) for a in annotators):
        raise ValueError(f"annotators must be a non-empty list of preferences.Annotator, got {annotators!r}")
    rng = random.Random(seed)
    rows = []
    for i, (p, rs) in enumerate(zip(prompts, responses)):
        if len(rs) < 2:
            raise ValueError(f"prompt {i} has {len(rs)} responses; a comparison needs at least 2")
        ann = annotators[i % len(annotators)]
        for chosen, rejected in label_pairs(ann, p, rs, rng):
            rows.append({"prompt": p, "chosen": chosen, "rejected": rejected, "annotator": ann.name, "group": i,
                         "gold_chosen": W.gold_reward(p, chosen).total,
                         "gold_rejected": W.gold_reward(p, rejected).total})
    return rows



def expected_rates(annotator, rows):
    """What a pool of copies of `annotator` would do on `rows`, computed from its preference probabilities p (no
    sampling, so a widget can redraw it exactly; notebook 06's annotator simulator):

    agreement       two copies label a pair the same way: E[p^2 + (1 - p)^2] (a lower reference for a predictor)
    ceiling         the best any predictor of its labels can do (Bayes accuracy): E[max(p, 1 - p)]
    gold_agreement  its label orders the pair as the gold reward does, over pairs whose gold rewards differ
    Rows need prompt, chosen, rejected, gold_chosen, gold_rejected (as collect() writes them)."""
    if not isinstance(annotator, Annotator):
        raise ValueError(f"annotator must be a preferences.Annotator, got {type(annotator).__name__}")
    if not rows:
        raise ValueError("expected_rates needs at least one row (prompt, chosen, rejected, gold_chosen, gold_rejected)")
    p = [annotator.p_prefers(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    decided = [(q, r["gold_chosen"] > r["gold_rejected"]) for q, r in zip(p, rows)
               if r["gold_chosen"] != r["gold_rejected"]]
    return {"agreement": sum(q * q + (1 - q) * (1 - q) for q in p) / len(p),
            "ceiling": sum(max(q, 1 - q) for q in p) / len(p),
            "gold_agreement": sum(q if first else 1 - q for q, first in decided) / len(decided) if decided else None,
            "p": p}

def comparisons_made(rows):
    """Human comparisons behind the rows: a K-way ranking costs K - 1 judgements at least; we count pairs."""
    return len(rows)


def gold_agreement(rows):
    """Fraction of labels that agree with the gold reward, over pairs whose gold rewards differ."""
    decided = [r for r in rows if r["gold_chosen"] != r["gold_rejected"]]
    if not decided:
        raise ValueError(f"gold agreement needs at least one pair whose gold rewards differ, got {len(rows)} rows "
                         "(all ties or none); pass more rows, e.g. from collect()")
    return sum(r["gold_chosen"] > r["gold_rejected"] for r in decided) / len(decided)


def agreement_matrix(labels):
    """labels: {annotator: [0/1 per item]} on the same items -> (mean pairwise % agreement, Fleiss' kappa)."""
    if not isinstance(labels, dict) or len(labels) < 2:
        raise ValueError(f"agreement needs a dict of at least 2 annotators' labels, got "
                         f"{len(labels) if isinstance(labels, dict) else type(labels).__name__}"
                         f"{' annotator(s)' if isinstance(labels, dict) else ''}")
    names = list(labels)
    n_items = len(labels[names[0]])
    if any(len(v) != n_items for v in labels.values()):
        raise ValueError("every annotator must label the same items")
    if n_items == 0:
        raise ValueError("agreement needs at least one labelled item per annotator")
    for name in names:
        _check_binary(f"annotator {name!r}'s labels", labels[name])
    pair_agree = [sum(x == y for x, y in zip(labels[a], labels[b])) / n_items
                  for a, b in itertools.combinations(names, 2)]
    return sum(pair_agree) / len(pair_agree), fleiss_kappa([[labels[a][i] for a in names] for i in range(n_items)])


def cohen_kappa(x, y):
    """Cohen's kappa of two raters' binary labels."""
    if len(x) != len(y):
        raise ValueError(f"the two raters must label the same items: got {len(x)} and {len(y)} labels")
    if len(x) == 0:
        raise ValueError("Cohen's kappa needs at least one item labelled by both raters")
    _check_binary("x", x)
    _check_binary("y", y)
    n = len(x)
    po = sum(a == b for a, b in zip(x, y)) / n
    px, py = sum(x) / n, sum(y) / n
    pe = px * py + (1 - px) * (1 - py)
    return (po - pe) / (1 - pe) if pe < 1 else 1.0


def fleiss_kappa(items):
    """Fleiss' kappa for binary labels: items is a list of per-item label lists (same raters per item)."""
    if len(items) == 0:
        raise ValueError("Fleiss' kappa needs at least one item")
    n = len(items[0])
    if n < 2:
        raise ValueError("Fleiss' kappa needs at least two raters per item")
    if any(len(it) != n for it in items):
        raise ValueError(f"every item needs the same number of raters; item 0 has {n}, others have "
                         f"{sorted({len(it) for it in items} - {n})}")
    for i, it in enumerate(items):
        _check_binary(f"item {i}", it)
    p_yes = sum(sum(it) for it in items) / (len(items) * n)
    p_e = p_yes ** 2 + (1 - p_yes) ** 2
    p_i = [(sum(it) * (sum(it) - 1) + (n - sum(it)) * (n - sum(it) - 1)) / (n * (n - 1)) for it in items]
    p_bar = sum(p_i) / len(p_i)
    return (p_bar - p_e) / (1 - p_e) if p_e < 1 else 1.0


def _check_binary(name, labels):
    bad = [v for v in labels if not (isinstance(v, numbers.Number) and v in (0, 1))]
    if bad:
        raise ValueError(f"{name} must be binary labels (0/1 or False/True), got {bad[0]!r}; "
                         "code each label as 1 (prefers the first response) or 0")
