"""Notebook 03's exercises: their checks accept other correct code and name the mistakes."""
import math

import torch

from exercise_harness import make_tests


# ---- 03.online_softmax
def online_softmax_lse(x, block):
    """Streams a running log-sum-exp instead of (m, l): float64-safe and finite for large scores."""
    lse = torch.full(x.shape[:-1], -math.inf, dtype=x.dtype)
    for s in range(0, x.shape[-1], block):
        lse = torch.logaddexp(lse, x[..., s:s + block].logsumexp(-1))
    return torch.exp(x - lse[..., None])


def online_softmax_flat(x, block):
    rows = x.reshape(-1, x.shape[-1])
    out = torch.empty_like(rows)
    for r in range(rows.shape[0]):
        m, l = -math.inf, 0.0
        for s in range(0, rows.shape[1], block):
            c = rows[r, s:s + block]
            m_new = max(m, c.max().item())
            l = l * math.exp(m - m_new) + torch.exp(c - m_new).sum().item()
            m = m_new
        out[r] = torch.exp(rows[r] - m) / l
    return out.reshape(x.shape)


def online_no_rescale(x, block):
    m = torch.full(x.shape[:-1] + (1,), -math.inf, dtype=x.dtype)
    l = torch.zeros_like(m)
    for s in range(0, x.shape[-1], block):
        c = x[..., s:s + block]
        m_new = torch.maximum(m, c.amax(-1, keepdim=True))
        l = l + torch.exp(c - m_new).sum(-1, keepdim=True)
        m = m_new
    return torch.exp(x - m) / l


def online_no_max(x, block):
    l = torch.zeros(x.shape[:-1] + (1,), dtype=x.dtype)
    for s in range(0, x.shape[-1], block):
        l = l + torch.exp(x[..., s:s + block]).sum(-1, keepdim=True)
    return torch.exp(x) / l


def online_last_chunk_only(x, block):
    m = torch.full(x.shape[:-1] + (1,), -math.inf, dtype=x.dtype)
    for s in range(0, x.shape[-1], block):
        c = x[..., s:s + block]
        m = torch.maximum(m, c.amax(-1, keepdim=True))
        l = torch.exp(c - m).sum(-1, keepdim=True)
    return torch.exp(x - m) / l


# ---- 03.tiled_attention
def tiled_kv_outer(q, k, v, block_q, block_k, is_causal=False, on_tile=None):
    """Same maths, written with the running log-sum-exp and normalised output per query block."""
    T_q, T_k, scale = q.shape[-2], k.shape[-2], q.shape[-1] ** -0.5
    outs, lses = [], []
    for qs in range(0, T_q, block_q):
        Qi = q[..., qs:qs + block_q, :]
        m = torch.full((*Qi.shape[:-1], 1), -math.inf, dtype=q.dtype)
        l = torch.zeros_like(m)
        acc = Qi.new_zeros(*Qi.shape[:-1], v.shape[-1])
        stop = min(qs + Qi.shape[-2], T_k) if is_causal else T_k
        for ks in range(0, stop, block_k):
            ke = min(ks + block_k, stop)
            S = torch.einsum("...id,...jd->...ij", Qi, k[..., ks:ke, :]) * scale
            if is_causal:
                future = torch.arange(ks, ke)[None, :] > torch.arange(qs, qs + Qi.shape[-2])[:, None]
                S = torch.where(future, torch.tensor(-math.inf, dtype=S.dtype), S)
            m_new = torch.maximum(m, S.amax(-1, keepdim=True))
            P = (S - m_new).exp()
            l = l * (m - m_new).exp() + P.sum(-1, keepdim=True)
            acc = acc * (m - m_new).exp() + torch.einsum("...ij,...jd->...id", P, v[..., ks:ke, :])
            m = m_new
            if on_tile:
                on_tile(qs, ks, m, l, acc)
        outs.append(acc / l)
        lses.append((m + l.log())[..., 0])
    return torch.cat(outs, -2), torch.cat(lses, -1)


def _tiled_variant(variant):
    def f(q, k, v, block_q, block_k, is_causal=False, on_tile=None):
        T_q, T_k, scale = q.shape[-2], k.shape[-2], 1 / math.sqrt(q.shape[-1])
        outs, lses = [], []
        for qs in range(0, T_q, block_q):
            Qi = q[..., qs:qs + block_q, :]
            m = torch.full((*Qi.shape[:-1], 1), -math.inf, dtype=q.dtype)
            l = torch.zeros_like(m)
            acc = torch.zeros(*Qi.shape[:-1], v.shape[-1], dtype=q.dtype)
            causal = is_causal and variant != "no_mask"
            k_end = min(qs + Qi.shape[-2], T_k) if causal else T_k
            for ks in range(0, k_end, block_k):
                Kj, Vj = k[..., ks:min(ks + block_k, k_end), :], v[..., ks:min(ks + block_k, k_end), :]
                S = Qi @ Kj.transpose(-2, -1) * (1.0 if variant == "no_scale" else scale)
                if causal:
                    rows = torch.arange(qs, qs + S.shape[-2])[:, None]
                    S = S.masked_fill(torch.arange(ks, ks + S.shape[-1])[None, :] > rows, -math.inf)
                m_new = torch.maximum(m, S.amax(-1, keepdim=True))
                P = torch.exp(S - m_new)
                alpha = torch.exp(m - m_new)
                l = (l if variant == "l" else alpha * l) + P.sum(-1, keepdim=True)
                acc = (acc if variant == "acc" else alpha * acc) + P @ Vj
                m = m_new
                if on_tile is not None and variant != "no_hook":
                    on_tile(qs, ks, m, l, acc)
            outs.append(acc / l)
            lses.append((torch.log(l) if variant == "lse" else m + torch.log(l)).squeeze(-1))
        return torch.cat(outs, -2), torch.cat(lses, -1)
    return f


# ---- 03.predict_standard_peak_bytes
def peak_from_shapes():
    T, d, b = 1024, 64, 4
    return 2 * T * T * b + T * d * b       # S and P alive together, then the output


# ---- 03.merge_softmax_states
def merge_via_lse(m1, l1, acc1, m2, l2, acc2):
    """Through log-sum-exps: lse_i = m_i + log l_i; float64-safe, then back to (m, l, acc)."""
    m = torch.maximum(m1, m2)
    lse = torch.logaddexp(m1 + l1.log(), m2 + l2.log())
    l = torch.exp(lse - m)
    w1, w2 = torch.exp(m1 - m), torch.exp(m2 - m)
    acc = torch.einsum("...t,...td->...td", w1, acc1) + torch.einsum("...t,...td->...td", w2, acc2)
    return m, l, acc


def merge_where(m1, l1, acc1, m2, l2, acc2):
    first_wins = m1 >= m2
    m = torch.where(first_wins, m1, m2)
    r = torch.exp(-(m1 - m2).abs())             # exp(smaller max − larger max)
    c1, c2 = torch.where(first_wins, 1.0, r), torch.where(first_wins, r, 1.0)
    c1, c2 = c1.to(l1.dtype), c2.to(l1.dtype)
    return m, c1 * l1 + c2 * l2, c1.unsqueeze(-1) * acc1 + c2.unsqueeze(-1) * acc2


def merge_no_rescale(m1, l1, acc1, m2, l2, acc2):
    return torch.maximum(m1, m2), l1 + l2, acc1 + acc2


def merge_l_not_rescaled(m1, l1, acc1, m2, l2, acc2):
    m = torch.maximum(m1, m2)
    c1, c2 = torch.exp(m1 - m), torch.exp(m2 - m)
    return m, l1 + l2, c1[..., None] * acc1 + c2[..., None] * acc2


def merge_acc_max(m1, l1, acc1, m2, l2, acc2):
    m = torch.maximum(m1, m2)
    c1, c2 = torch.exp(m1 - m), torch.exp(m2 - m)
    return m, c1 * l1 + c2 * l2, torch.maximum(acc1, acc2)


def merge_inverted(m1, l1, acc1, m2, l2, acc2):
    m = torch.maximum(m1, m2)
    c1, c2 = torch.exp(m - m1), torch.exp(m - m2)
    return m, c1 * l1 + c2 * l2, c1[..., None] * acc1 + c2[..., None] * acc2


def merge_normalised(m1, l1, acc1, m2, l2, acc2):
    m = torch.maximum(m1, m2)
    c1, c2 = torch.exp(m1 - m), torch.exp(m2 - m)
    l = c1 * l1 + c2 * l2
    return m, l, (c1[..., None] * acc1 + c2[..., None] * acc2) / l[..., None]


def merge_m_sum(m1, l1, acc1, m2, l2, acc2):
    m = m1 + m2
    c1, c2 = torch.exp(m1 - m), torch.exp(m2 - m)
    return m, c1 * l1 + c2 * l2, c1[..., None] * acc1 + c2[..., None] * acc2


CORRECT = {
    "03.online_softmax": [online_softmax_lse, online_softmax_flat],
    "03.tiled_attention": [tiled_kv_outer],
    "03.predict_standard_peak_bytes": [peak_from_shapes],
    "03.merge_softmax_states": [merge_via_lse, merge_where],
}
WRONG = {
    "03.online_softmax": [(online_no_rescale, "not rescaled"), (online_no_max, "overflows"),
                          (online_last_chunk_only, "last chunk")],
    "03.tiled_attention": [(_tiled_variant("acc"), "acc is not rescaled"), (_tiled_variant("l"), "l is not rescaled"),
                           (_tiled_variant("no_scale"), "not scaled"), (_tiled_variant("no_mask"), "later keys"),
                           (_tiled_variant("lse"), "misses the max"), (_tiled_variant("no_hook"), "on_tile")],
    "03.predict_standard_peak_bytes": [(lambda: 4 * 1024 ** 2, "two t × t"), (lambda: 12 * 1024 ** 2, "freed"),
                                       (lambda: 2 * 1024 ** 2, "not bytes")],
    "03.merge_softmax_states": [(merge_no_rescale, "without rescaling"), (merge_l_not_rescaled, "l is the sum"),
                                (merge_acc_max, "max of the two acc"), (merge_inverted, "inverted"),
                                (merge_normalised, "normalised"), (merge_m_sum, "not their sum")],
}

test_accepts_a_correct_implementation, test_rejects_a_wrong_implementation_with_its_hint = make_tests(CORRECT, WRONG)
