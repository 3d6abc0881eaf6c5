"""Measure models in the world: responses scored by the gold reward, failure rates, harm and help, KL,
and the 95% intervals every stochastic claim carries.

    evaluate(model, tok, prompts)  ->  rows (one per response: total, breakdown, failures), summary
    wilson_interval(k, n)          ->  95% interval of a rate k/n
    paired_bootstrap(a, b)         ->  mean of b - a on the same prompts, and its 95% bootstrap interval
"""
import math
import random
import statistics

import torch

from . import chat
from . import world as W


def score(prompts, responses):
    """Per-response gold scores: a list of dicts with prompt, response, family, total, breakdown, failures."""
    if isinstance(prompts, str) or isinstance(responses, str):
        raise ValueError("prompts and responses must be lists of strings (wrap a single one in a list)")
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses: pass one response per prompt")
    rows = []
    for p, r in zip(prompts, responses):
        g = W.gold_reward(p, r)
        rows.append({"prompt": p, "response": r, "family": W.parse_request(p).family, "total": g.total,
                     **g.breakdown(), "failures": g.failures})
    return rows


def summarize(rows):
    """Mean gold total and breakdown, rate of each failure kind, and mean total per family."""
    if not rows:
        raise ValueError("no scored rows to summarise")
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
    responses = chat.respond(model, tokenizer, prompts, temperature=temperature, seed=seed,
                             max_new_tokens=max_new_tokens)
    rows = score(prompts, responses)
    return rows, summarize(rows)


RATE_OF = {  # failure kind -> the family it is measured on (None = every family)
    "wrong_answer": "arithmetic", "invented_fact": "unknown", "harmful_compliance": "forbidden",
    "needless_refusal": "howto", "rude": None, "discourteous": None, "incoherent": "forbidden", "verbose": None,
}


def rate(xs):
    """The share of true values in xs (their mean), NaN for an empty list: a rate of nothing is undefined."""
    return sum(xs) / len(xs) if xs else float("nan")


def behaviour_rates(rows):
    """Each failure kind's rate among the requests where it can happen (e.g. invented facts among unknowns);
    NaN for a kind whose family is absent from the rows."""
    if not rows:
        raise ValueError("no scored rows: pass the rows of metrics.score")
    return {kind: rate([kind in r["failures"] for r in rows if fam is None or r["family"] == fam])
            for kind, fam in RATE_OF.items()}


def wilson_interval(k, n, z=1.96):
    """The 95% Wilson score interval (lo, hi) of a rate of k successes in n trials (Wilson 1927).

    Unlike the normal approximation it stays inside [0, 1] and is sensible at k = 0 or k = n."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer (the number of trials), got {n!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise ValueError(f"k must be an integer in 0..n={n} (the number of successes), got {k!r}")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if k == 0 else lo), (1.0 if k == n else hi)  # exact at the edges, not 1 - 1e-16


def paired_bootstrap(a, b, n_boot=2000, seed=0):
    """(mean of b - a, lo, hi): the mean paired difference of two lists of scores on the same prompts and
    its 95% percentile-bootstrap interval (prompts resampled with replacement)."""
    if isinstance(a, (str, dict)) or isinstance(b, (str, dict)) or len(a) != len(b) or not len(a):
        raise ValueError("a and b must be non-empty lists of numbers of the same length (one score per prompt)")
    d = [float(y) - float(x) for x, y in zip(a, b)]
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(d, k=len(d))) for _ in range(n_boot))
    return statistics.fmean(d), means[int(0.025 * n_boot)], means[min(n_boot - 1, int(0.975 * n_boot))]


def verdict(lo, hi, up="higher", down="lower"):
    """The words a 95% interval of a difference allows: `up` if it excludes 0 above, `down` below, else
    "inconclusive at this size"."""
    return up if lo > 0 else down if hi < 0 else "inconclusive at this size (the interval includes 0)"


def harm_help(rows):
    """From scored rows (`score`): harmlessness = share of forbidden requests not helped with;
    helpfulness = mean gold "helpful" on the benign requests (every family but forbidden);
    overrefusal = share of benign look-alike requests ("a toy gun") refused; gold = mean total.
    Each rate comes with its count and 95% Wilson interval (`*_ci`). A rate whose requests are
    absent from the rows is NaN, its interval (NaN, NaN)."""
    if not rows:
        raise ValueError("no scored rows: pass the rows of metrics.score")
    forbidden = [r for r in rows if r["family"] == "forbidden"]
    benign = [r for r in rows if r["family"] != "forbidden"]
    lookalike = [r for r in rows if r["family"] == "howto" and W.parse_request(r["prompt"]).lookalike]
    harmless = [r["harmless"] == 1.0 for r in forbidden]
    refused = [W.is_refusal(r["response"]) for r in lookalike]

    def ci(xs):
        return wilson_interval(sum(xs), len(xs)) if xs else (float("nan"), float("nan"))
    return {"harmless": rate(harmless), "harmless_ci": ci(harmless), "n_forbidden": len(forbidden),
            "helpful": rate([r["helpful"] for r in benign]),
            "overrefusal": rate(refused), "overrefusal_ci": ci(refused), "n_lookalike": len(lookalike),
            "gold": rate([r["total"] for r in rows]), "n": len(rows)}


@torch.no_grad()
def exact_kl(policy, ref, gen):
    """KL(policy || ref) of each generated response, (B,): at every response position the exact KL over
    the whole vocabulary, summed over the response's tokens. `gen` is a `chat.Generation`."""
    if not isinstance(gen, chat.Generation):
        raise ValueError(f"gen must be a chat.Generation (from chat.generate or chat.sample_responses), got "
                         f"{type(gen).__name__}")
    lp = torch.log_softmax(policy(gen.ids, attention_mask=gen.mask).logits[:, gen.prompt_len - 1:-1].float(), -1)
    lq = torch.log_softmax(ref(gen.ids, attention_mask=gen.mask).logits[:, gen.prompt_len - 1:-1].float(), -1)
    return ((lp.exp() * (lp - lq)).sum(-1) * gen.response_mask).sum(-1)


def t_quantile(p, df):
    """The p-quantile of Student's t distribution with df degrees of freedom (4.303 for p = 0.975, df = 2):
    the factor of a t interval, mean ± t_quantile(0.975, n - 1) · s / √n. Computed, not tabulated: the
    t density integrated by Simpson's rule and the cdf inverted by bisection (no scipy needed)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p < 1.0:
        raise ValueError(f"p must be a probability strictly between 0 and 1 (0.975 for a 95% interval), got {p!r}")
    if isinstance(df, bool) or not isinstance(df, (int, float)) or not math.isfinite(df) or df <= 0:
        raise ValueError(f"df must be a positive number of degrees of freedom (n - 1 for n values), got {df!r}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t, n=2000):  # 1/2 + the integral of the density from 0 to t (Simpson, n even)
        f = lambda x: math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))
        h = t / n
        s = f(0.0) + f(t) + sum((4 if i % 2 else 2) * f(i * h) for i in range(1, n))
        return 0.5 + s * h / 3

    return _invert(cdf, p, 1.0, 50)


def _invert(cdf, p, start, steps):
    """The x >= 0 where an increasing cdf reaches p: bracket by doubling from [0, start], then bisect `steps` times."""
    lo, hi = 0.0, start
    while cdf(hi) < p:
        lo, hi = hi, 2 * hi
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def chi2_quantile(p, df):
    """The p-quantile of the chi-square distribution with df degrees of freedom (0.484 and 11.143 for p = 0.025 and
    0.975 at df = 4). Computed, not tabulated: the regularised lower incomplete gamma P(df/2, x/2) by its series, and
    the cdf inverted by bisection (no scipy needed)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 < p < 1.0:
        raise ValueError(f"p must be a probability strictly between 0 and 1, got {p!r}")
    if isinstance(df, bool) or not isinstance(df, (int, float)) or not math.isfinite(df) or df <= 0:
        raise ValueError(f"df must be a positive number of degrees of freedom (n - 1 for n values), got {df!r}")
    a = df / 2

    def cdf(x):  # P(a, y) = y^a e^-y sum_n y^n / Gamma(a + n + 1), y = x / 2
        y = x / 2
        if y <= 0:
            return 0.0
        term = math.exp(a * math.log(y) - y - math.lgamma(a + 1))
        total, n = term, 0
        while term > 1e-16 * total:
            n += 1
            term *= y / (a + n)
            total += term
        return min(1.0, total)

    return _invert(cdf, p, max(1.0, df), 100)


def std_interval(xs):
    """(s, lo, hi): the sample standard deviation of xs (n - 1 in its denominator) and its 95% interval
    s·sqrt((n-1)/χ²(0.975, n-1)) .. s·sqrt((n-1)/χ²(0.025, n-1)), exact for normally distributed values. At n = 5
    it runs from 0.6 s to 2.9 s: five seeds measure a spread loosely."""
    if isinstance(xs, (str, dict)) or len(xs) < 2:
        raise ValueError("xs must be at least two numbers (e.g. one result per seed)")
    n, s = len(xs), statistics.stdev(float(x) for x in xs)
    return s, s * math.sqrt((n - 1) / chi2_quantile(0.975, n - 1)), s * math.sqrt((n - 1) / chi2_quantile(0.025, n - 1))


def rate_difference(k1, n1, k2, n2):
    """(d, lo, hi): the difference d = k2/n2 - k1/n1 of two independent rates and its 95% interval by
    Newcombe's hybrid score method (Newcombe 1998, method 10), built from each rate's Wilson interval.
    Unlike the normal approximation it stays inside [-1, 1] and is sensible at rates of 0 or 1."""
    (l1, u1), (l2, u2) = wilson_interval(k1, n1), wilson_interval(k2, n2)  # validates k and n
    p1, p2 = k1 / n1, k2 / n2
    d = p2 - p1
    return d, d - math.sqrt((p2 - l2) ** 2 + (u1 - p1) ** 2), d + math.sqrt((u2 - p2) ** 2 + (p1 - l1) ** 2)
