"""Attention back-tracking (ABT, STTABT section 3.2): which tokens each layer really needs.

Starting from the output (the CLS token), walk the layers backwards. At layer ``l`` the tokens the
next layer needs, ``O_{l+1}``, are queries; the keys they attend to most are what layer ``l`` must
take in. Each query row is weighted by how important that query itself turned out to be
(``p * w_q + 1 - p``), so attention paid by important tokens counts more.

Pure functions on head-averaged attention probabilities, batched with boolean masks (the reference
used an index ``unique`` that was only right for batch size 1). Given a scout's queries and keys
(:class:`~sttabt.pruners.qk.QKAttention`) instead of maps, back-tracking computes only the rows it
reads: those of ``O_{l+1}``, gathered and padded to the batch's largest ``|O_{l+1}|`` with zero
weights, so layer ``l`` costs ``|O_{l+1}|`` rows instead of ``T``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .layout import DEFAULT_LAYOUT, TokenLayout
from .masks import fill_to_count, keep_count, keep_counts, topk_mask
from .qk import QKAttention, kept_index, plan_inputs

IMPACT_MIX = 0.1  # p: how much a query's own importance weighs its attention row


def backtrack_topk(
    attn: Sequence[torch.Tensor],
    keep: Sequence[float],
    *,
    budget: str = "per_sample",
    p: float = IMPACT_MIX,
    valid: torch.Tensor | None = None,
    layout: TokenLayout = DEFAULT_LAYOUT,
) -> torch.Tensor:
    """Hard plan (L + 1, B, T) from head-averaged attention probabilities.

    ``attn[l]``: (B, T, T) attention of layer ``l`` (rows: queries, columns: keys), already averaged
    over heads. ``keep[l]``: keep ratio k_l of layer ``l``'s input set.
    ``budget="per_sample"``: ``I_l = top-k(importance, ceil(k_l T)) | O_{l+1}`` (counts may differ).
    ``budget="fixed"``: ``I_l = O_{l+1}`` plus the most important other tokens up to
    ``max(ceil(k_l T), |O_{l+1}|)`` tokens, the same count for every sample.
    ``valid``: optional (B, T) bool of real tokens (text with padding): padding is never kept and
    ``T`` above becomes each sample's real length (per-sample budget only).
    ``layout``: the host's prefix tokens (in every set, not counted as patches, see
    :class:`~sttabt.pruners.layout.TokenLayout`) and pooling: ``O_L`` is the prefix tokens, equal
    weights; an ``"avg"`` head scores the last layer's keys from every query, equal weights, and
    ``O_L = I_{L-1}``.
    """
    batch, tokens = plan_inputs(attn, keep, budget, valid)
    depth = len(attn)
    sparse = isinstance(attn, QKAttention)
    device, dtype = (attn.device, attn.dtype) if sparse else (attn[0].device, attn[0].dtype)
    floor = layout.always(batch, tokens, device=device)   # in every set
    averaged = layout.averaged
    if averaged:  # the query rows of the first step: every (valid) token
        out = torch.ones_like(floor) if valid is None else floor | valid.bool()
    else:
        out = floor
    weight = out.to(dtype) / out.sum(-1, keepdim=True)  # impact weights w (equal), zero outside O_{l+1}
    masks = [out]
    n_out = tokens if averaged else layout.prefix  # |O_{l+1}|, the same for every sample (fixed / static, no padding)
    for layer in reversed(range(depth)):
        rows = out.to(weight.dtype) * (p * weight + 1 - p)
        if sparse:
            # fixed and static budgets: the count is known, no host sync; per-sample: the batch's largest
            n = n_out if budget in ("fixed", "static") and valid is None else int(out.sum(-1).max())
            index = kept_index(out, n)
            importance = torch.einsum("bq,bqk->bk", rows.gather(1, index), attn.rows(layer, index).to(weight.dtype))
        else:
            importance = torch.einsum("bq,bqk->bk", rows, attn[layer].to(weight.dtype))
        importance = importance / out.sum(-1, keepdim=True)
        first_averaged = averaged and layer == depth - 1  # O_L is not known yet: it is I_{L-1}
        union = floor if first_averaged else out
        if valid is not None:
            score = layout.compete(importance.masked_fill(~valid, -math.inf))
            kept = fill_to_count(score, torch.zeros_like(out), keep_counts(keep[layer], valid)) | union
        elif budget == "per_sample":
            kept = topk_mask(layout.compete(importance), layout.topk_count(keep[layer], tokens)) | union
        else:
            n_out = (0 if first_averaged else n_out)
            n_out = max(n_out, layout.count(keep[layer], tokens))
            count = union.sum(-1).clamp(min=layout.count(keep[layer], tokens))
            kept = fill_to_count(importance, union, count)
        if first_averaged:
            weight = kept.to(weight.dtype)  # O_L = I_{L-1}: every token the last layer keeps, equal weights
            masks[0] = kept
        else:
            weight = importance * kept
        weight = weight / weight.sum(-1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny)
        out = kept
        masks.append(out)
    return torch.stack(masks[::-1]).to(dtype)


def forward_topk(attn: Sequence[torch.Tensor], keep: Sequence[float], *,
                 layout: TokenLayout = DEFAULT_LAYOUT) -> torch.Tensor:
    """Hard plan from a hand-set schedule, selecting forwards (no back-tracking).

    Layer 0 takes in every token. Layer ``l`` outputs the prefix tokens (CLS) plus the tokens of its
    input set that receive the most attention from that set's queries at layer ``l``,
    ``ceil(keep[l + 1] * T)`` tokens in all (see ``layout``); the last layer outputs the prefix only
    (an ``"avg"`` head: every token it takes in). Counts are the same for every sample. This is the
    "manual top-k" baseline that back-tracking is compared with.
    """
    depth = len(attn)
    if len(keep) != depth:
        raise ValueError(f"need one keep ratio per layer ({depth}), got {len(keep)}")
    batch, tokens, _ = attn[0].shape
    device = attn[0].device
    floor = layout.always(batch, tokens, device=device)
    current = torch.ones(batch, tokens, dtype=torch.bool, device=device)
    masks = [current]
    for layer in range(depth - 1):
        rows = current.to(attn[layer].dtype)
        received = torch.einsum("bq,bqk->bk", rows, attn[layer]) / rows.sum(-1, keepdim=True)
        received = received.masked_fill(~current, float("-inf"))
        count = torch.minimum(current.sum(-1), torch.full_like(current.sum(-1), layout.count(keep[layer + 1], tokens)))
        current = fill_to_count(received, floor, count)
        masks.append(current)
    masks.append(current if layout.averaged else floor)
    return torch.stack(masks).to(attn[0].dtype)
