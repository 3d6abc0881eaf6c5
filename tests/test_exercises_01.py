"""Notebook 01's exercises: other correct implementations pass, plausible mistakes get their hint."""
import math

import torch

from exercise_harness import make_tests


def softmax_loop(x):
    out = torch.empty_like(x)
    flat, res = x.reshape(-1, x.shape[-1]), out.view(-1, x.shape[-1])
    for r in range(flat.shape[0]):
        m = max(flat[r].tolist())
        e = [math.exp(v - m) for v in flat[r].tolist()]
        res[r] = torch.tensor([v / sum(e) for v in e], dtype=x.dtype)
    return out


def softmax_logsumexp(x):
    return torch.exp(x - torch.logsumexp(x, dim=-1, keepdim=True))


def softmax_cols(x):
    z = x - x.amax(0, keepdim=True)
    return z.exp() / z.exp().sum(0, keepdim=True)


def softmax_naive(x):
    return x.exp() / x.exp().sum(-1, keepdim=True)


def causal_loop(T):
    m = torch.zeros(T, T, dtype=torch.bool)
    for i in range(T):
        for j in range(i + 1):
            m[i, j] = True
    return m


def causal_arange(T):
    i = torch.arange(T)
    return i[None, :] <= i[:, None]


def attention_einsum(q, k, v, mask=None):
    s = torch.einsum("...qd,...kd->...qk", q, k) * q.shape[-1] ** -0.5
    if mask is not None:
        s = torch.where(mask, s, torch.tensor(float("-inf"), dtype=s.dtype))
    w = torch.exp(s - s.amax(-1, keepdim=True))
    return (w / w.sum(-1, keepdim=True)) @ v


def attention_sdpa(q, k, v, mask=None):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _attn(scale, dim=-1, invert=False, after=False):
    def f(q, k, v, mask=None):
        s = q @ k.transpose(-2, -1) * scale(q, v)
        if mask is not None and not after:
            s = s.masked_fill(mask if invert else ~mask, float("-inf"))
        w = torch.softmax(s, dim=dim)
        if mask is not None and after:
            w = w * mask
        return w @ v
    return f


SQRT = lambda q, v: 1 / math.sqrt(q.shape[-1])  # noqa: E731


def split_view_then_transpose(t, n_heads):
    B, T, C = t.shape
    return t.reshape(B, T, n_heads, -1).permute(0, 2, 1, 3)


def split_chunks(t, n_heads):
    return torch.stack(t.chunk(n_heads, dim=-1), dim=1)


def sinusoid_loop(n, d):
    pe = torch.zeros(n, d)
    for p in range(n):
        for i in range(0, d, 2):
            pe[p, i] = math.sin(p / 10000 ** (i / d))
            pe[p, i + 1] = math.cos(p / 10000 ** (i / d))
    return pe


def sinusoid_stack(n, d):
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    ang = pos * torch.exp(-math.log(10000.0) * torch.arange(0, d, 2, dtype=torch.float64) / d)
    return torch.stack([ang.sin(), ang.cos()], dim=-1).reshape(n, d).float()


def sinusoid_concat(n, d):
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    ang = pos / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    return torch.cat([ang.sin(), ang.cos()], -1)


def sinusoid_half_exponent(n, d):
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    ang = pos / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / d)
    return torch.stack([ang.sin(), ang.cos()], -1).reshape(n, d)


CORRECT = {
    "01.softmax": [softmax_loop, softmax_logsumexp],
    "01.predict_unscaled_variance": [lambda: 64, lambda: 63.0],
    "01.causal_mask": [causal_loop, causal_arange],
    "01.attention": [attention_einsum, attention_sdpa],
    "01.split_heads": [split_view_then_transpose, split_chunks],
    "01.sinusoidal_positions": [sinusoid_loop, sinusoid_stack],
}

WRONG = {
    "01.softmax": [(softmax_cols, "over the last axis"), (softmax_naive, "subtract each row's max"),
                   (lambda x: x.exp(), "not normalised")],
    "01.predict_unscaled_variance": [(lambda: 8, "standard deviation"), (lambda: 1, "after"),
                                     (lambda: 4096, "you predicted 4096")],
    "01.causal_mask": [(lambda T: torch.ones(T, T, dtype=torch.bool).triu(), "attend to the future"),
                       (lambda T: torch.ones(T, T, dtype=torch.bool).tril(-1), "blocks the diagonal"),
                       (lambda T: torch.ones(T, T).tril(), "boolean"),
                       (lambda T: torch.ones(T, T, dtype=torch.bool).triu(1), "inverted")],
    "01.attention": [(_attn(SQRT, dim=-2), "over the keys"), (_attn(lambda q, v: 1.0), "not scaled"),
                     (_attn(lambda q, v: 1 / q.shape[-1]), "divided by d"),
                     (_attn(lambda q, v: 1 / math.sqrt(v.shape[-1])), "d_v"),
                     (_attn(SQRT, invert=True), "inverted"), (_attn(SQRT, after=True), "zeroed after the softmax")],
    "01.split_heads": [(lambda t, h: t.reshape(t.shape[0], h, t.shape[1], -1), "direct reshape"),
                       (lambda t, h: t.view(t.shape[0], t.shape[1], -1, h).permute(0, 3, 1, 2), "strided"),
                       (lambda t, h: t.view(t.shape[0], t.shape[1], h, -1), "shape")],
    "01.sinusoidal_positions": [(sinusoid_concat, "interleave"), (sinusoid_half_exponent, "2i/d_model"),
                                (lambda n, d: sinusoid_stack(n, d).view(n, d // 2, 2).flip(-1).reshape(n, d),
                                 "swapped")],
}

test_accepts_a_correct_implementation, test_rejects_a_wrong_implementation_with_its_hint = make_tests(CORRECT, WRONG)
