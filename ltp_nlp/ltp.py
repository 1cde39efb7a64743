"""LTP (Learned Token Pruning, KDD 2022) on text: the threshold maths of
:mod:`sttabt.pruners.thresholds` (shared with images) with the class token as the one kept token,
the top-k baseline and the regulariser's means.

A token's *score* at a layer is the attention it receives, summed over heads and live queries,
divided by ``heads * N``. With ``scoring_mode="mean"`` N is a fixed length (``score_length``, 128 in the
reference), so a threshold means the same whatever the batch's padded length; ``"mean_norm"`` divides
by the sentence's true length. A token is pruned when its score falls below the layer's threshold;
once pruned it stays pruned (it is no longer a key from the next layer on). CLS is always kept.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from sttabt.pruners import manual_schedule
from sttabt.pruners.masks import CLS_INDEX, fill_to_count
from sttabt.pruners import thresholds
from sttabt.pruners.thresholds import (FIRST_PRUNED_LAYER, MIN_THRESHOLD, received_attention,  # noqa: F401
                                       threshold_base)

TOPK_MIN_RATE = 0.01   # the top-k schedule never keeps fewer than 1 % of the tokens


def cls_only(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: True at the class token only."""
    always = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
    always[:, CLS_INDEX] = True
    return always


def soft_keep(score: torch.Tensor, threshold: torch.Tensor, temperature: float) -> torch.Tensor:
    """Relaxed keep mask ``sigmoid((score - threshold) / T)``, CLS pinned to 1."""
    return thresholds.soft_keep(score, threshold, temperature, cls_only(score))


def hard_keep(score: torch.Tensor, threshold: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """Bool mask of the live tokens whose score reaches ``max(1e-5, threshold)``; CLS always kept."""
    return thresholds.hard_keep(score, threshold, live, cls_only(score))


def topk_rates(depth: int, keep_rate: float) -> list[float]:
    """Keep rate of each layer: 1 for the first max(3, ceil(0.15 L)) layers, then linear down to
    ``keep_rate`` at the last layer (SpAtten's schedule, the same as the vision manual baseline)."""
    return [max(TOPK_MIN_RATE, rate) for rate in manual_schedule(depth, keep_rate)]


def topk_keep(score: torch.Tensor, live: torch.Tensor, lengths: torch.Tensor, rate: float) -> torch.Tensor:
    """Bool mask keeping ``round(length * rate)`` live tokens per row (at least CLS) by score."""
    live = live.bool()
    count = torch.round(lengths.to(torch.float64) * rate).long()
    count = torch.minimum(count.clamp_min(1), live.sum(-1))
    return fill_to_count(score.masked_fill(~live, -math.inf), cls_only(live), count) & live


def mask_means(masks: Sequence[torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
    """(L,) mean of each layer's (B, T) keep mask over real tokens."""
    stacked = torch.stack(list(masks))
    valid = valid.to(stacked.dtype)
    return (stacked * valid).sum(dim=(1, 2)) / valid.sum()


def padded_mask_means(masks: Sequence[torch.Tensor], pad_values: torch.Tensor, length: int) -> torch.Tensor:
    """(L,) mean of each layer's (B, T) keep mask over ``length`` positions per sample, every position
    included, as if the batch had been padded to ``length`` (the reference pads every batch to 128):
    the ``length - T`` positions past the batch's width take ``pad_values[l]`` (L,)."""
    stacked = torch.stack(list(masks))
    width = stacked.shape[-1]
    if length < width:
        raise ValueError(f"the batch is {width} tokens wide, more than the fixed length {length}: "
                         f"raise score_length or truncate the inputs to {length} tokens")
    return (stacked.sum(-1).mean(-1) + (length - width) * pad_values) / length

