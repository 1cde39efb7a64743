"""Pure helpers on keep masks.

A *plan* is a float tensor ``masks`` of shape ``(L + 1, B, T)``: ``masks[l]`` is the input set of
layer ``l`` (the tokens it uses as keys and values) and ``masks[l + 1]`` its output set (the tokens it
computes queries, attention output and MLP for). Plans are nested, ``masks[l + 1] <= masks[l]``, and
token 0 (CLS) is in every set. Hard plans hold 0/1, soft plans values in (0, 1).

Three budgets turn scores into hard sets:
* ``"static"`` (deployment): every sample keeps counts fixed ahead of time, one per set of the plan
  (``ceil(k_l * T)`` for the top-k pruners, calibrated on data for the concrete pruner). A sample's
  plan and prediction do not depend on the other samples of its batch; shapes are static and known
  without looking at the data, so the model compiles and exports (``torch.compile``, ONNX).
* ``"fixed"`` (training, research): every sample keeps the same number of tokens per layer. For the
  top-k pruners that is the static count; for the concrete pruner it is the batch's mean count, so it
  is **batch-dependent**: one odd image changes what every other image keeps.
* ``"per_sample"`` (training, research): every sample keeps the tokens its own scores select; counts
  differ across the batch and the pruned executor pads to the batch maximum with a key padding mask.
  The kept sets do not depend on the batch, but the counts (and so the shapes) do.
"""
from __future__ import annotations

import math

import torch

from ..capture import capturing

BUDGETS = ("per_sample", "fixed", "static")
CLS_INDEX = 0
ROUNDING_DIGITS = 6  # so that 0.3 * 10 is 3 tokens, not ceil(3.0000000000000004)


def check_budget(budget: str) -> str:
    if budget not in BUDGETS:
        raise ValueError(f"unknown budget {budget!r}: use one of {', '.join(BUDGETS)}")
    return budget


def check_plan_inputs(attn, keep, budget: str, valid) -> tuple[int, int]:
    """The (batch, tokens) of a top-k planner's inputs, after checking the budget, one keep ratio per
    layer, and that padded inputs (``valid``) use per-sample budgets."""
    check_budget(budget)
    if valid is not None and budget != "per_sample":
        raise ValueError("inputs with padding (valid=...) need budget='per_sample'")
    if len(keep) != len(attn):
        raise ValueError(f"need one keep ratio per layer ({len(attn)}), got {len(keep)}")
    batch, tokens, _ = attn[0].shape
    return batch, tokens


def check_static_counts(counts, tokens: int, depth: int) -> tuple[int, ...]:
    """Static counts as a tuple of ``depth + 1`` ints, checked: ``counts[0] <= tokens``, non-increasing
    (nested sets, ``O_{l+1}`` inside ``O_l``) and at least 1 (the CLS token)."""
    counts = tuple(int(c) for c in counts)
    if len(counts) != depth + 1:
        raise ValueError(f"need {depth + 1} static counts (one per set of the plan), got {len(counts)}")
    if counts[0] > tokens or min(counts) < 1 or any(a < b for a, b in zip(counts, counts[1:])):
        raise ValueError(f"static counts must be non-increasing from at most {tokens} tokens down to at "
                         f"least 1 (the CLS token), got {list(counts)}")
    return counts


def backward_counts(keep, tokens: int, layout=None) -> tuple[int, ...]:
    """Static counts of a back-tracking plan: ``masks[L]`` is CLS only, ``masks[l]`` holds
    ``max(ceil(k_l * T), |masks[l + 1]|)`` tokens (the union with the next layer's set); the counts
    of ``layout`` (:class:`~sttabt.pruners.layout.TokenLayout`: prefix tokens, an ``avg`` head's
    ``masks[L] == masks[L - 1]``) when given."""
    from .layout import DEFAULT_LAYOUT

    layout = layout or DEFAULT_LAYOUT
    counts = [layout.prefix]
    for ratio in reversed(keep):
        counts.append(max(layout.count(ratio, tokens), counts[-1]))
    if layout.averaged:
        counts[0] = counts[1] = layout.count(keep[-1], tokens)
    return tuple(counts[::-1])


def forward_counts(keep, tokens: int, layout=None) -> tuple[int, ...]:
    """Static counts of a forward-selecting plan: ``masks[0]`` is every token, ``masks[l]`` holds
    ``min(ceil(k_l * T), |masks[l - 1]|)`` tokens, ``masks[L]`` is CLS only (see ``layout``, as in
    :func:`backward_counts`)."""
    from .layout import DEFAULT_LAYOUT

    layout = layout or DEFAULT_LAYOUT
    counts = [int(tokens)]
    for ratio in keep[1:]:
        counts.append(min(layout.count(ratio, tokens), counts[-1]))
    return tuple(counts + [layout.last_count(counts[-1])])


def cls_one_hot(batch: int, tokens: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """(B, T) mask holding only the CLS token."""
    mask = torch.zeros(batch, tokens, device=device, dtype=dtype)
    mask[:, CLS_INDEX] = 1
    return mask


def fill_to_count(score: torch.Tensor, must_keep: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Keep ``must_keep`` plus the best-scoring other tokens until ``count`` tokens per row are kept.

    ``score``: (B, T); ``must_keep``: (B, T) bool; ``count``: (B,) integer tensor, at least the number
    of ``must_keep`` tokens of its row. Works without a host sync (ranks instead of ``topk(k)``).
    Ties are broken by token index, so the result is deterministic.
    """
    score = score.masked_fill(must_keep, float("inf"))
    return descending_rank(score) < count.unsqueeze(-1)


def descending_rank(score: torch.Tensor) -> torch.Tensor:
    """(B, T) rank of every token in its row, best first, ties by lower index: the position a stable
    descending sort gives it. Eager: that sort. Inside a graph capture (``torch.compile``,
    ``torch.export``, ONNX export, tracing): :func:`pairwise_descending_rank`, the same ranks in a
    form every exporter takes (ONNX has no stable ``Sort``)."""
    if capturing():
        return pairwise_descending_rank(score)
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    positions = torch.arange(score.shape[-1], device=score.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


def pairwise_descending_rank(score: torch.Tensor) -> torch.Tensor:
    """:func:`descending_rank` counted by pairwise comparison, ``#{j: s_j > s_i} + #{j < i: s_j = s_i}``:
    (B, T, T) booleans, no sort."""
    tokens = score.shape[-1]
    index = torch.arange(tokens, device=score.device)
    earlier = index[None, :] < index[:, None]                       # [i, j]: j before i
    other, this = score[:, None, :], score[:, :, None]
    beats = (other > this) | ((other == this) & earlier)
    return beats.sum(-1)


def topk_mask(score: torch.Tensor, k: int) -> torch.Tensor:
    """(B, T) bool mask of the ``k`` best-scoring tokens of each row (ties: lower index first)."""
    count = torch.full(score.shape[:1], k, device=score.device, dtype=torch.long)
    return fill_to_count(score, torch.zeros_like(score, dtype=torch.bool), count)


def keep_count(ratio: float, tokens: int) -> int:
    """Tokens kept for a keep ratio: ``ceil(ratio * T)``, at least one (the CLS token)."""
    return max(1, math.ceil(round(ratio * int(tokens), ROUNDING_DIGITS)))  # int(): shapes are tensors under tracing


def keep_counts(ratio: float, valid: torch.Tensor) -> torch.Tensor:
    """(B,) tokens kept per sample of a padded batch: ``ceil(ratio * real length)``, at least 1."""
    return torch.ceil(torch.round(ratio * valid.sum(-1).double(), decimals=ROUNDING_DIGITS)).long().clamp_min(1)


def check_keep(keep: float) -> float:
    keep = float(keep)
    if not (0.0 < keep <= 1.0):  # also rejects NaN
        raise ValueError(f"keep ratio must be in (0, 1], got {keep}")
    return keep


def counts(masks: torch.Tensor) -> torch.Tensor:
    """(L + 1, B) number of tokens in each set of a hard plan."""
    return (masks > 0.5).sum(-1)


def keep_ratio_per_layer(masks: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(L,) mean share of (valid) tokens each layer takes in, averaged over the batch."""
    layer_in = masks[:-1]
    if valid is None:
        return layer_in.mean(dim=(1, 2))
    valid = valid.to(masks.dtype)
    return (layer_in * valid).sum(-1).div(valid.sum(-1)).mean(-1)
