"""LTP (Learned Token Pruning, KDD 2022): pure functions on attention probabilities.

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

MIN_THRESHOLD = 1e-5   # hard rule: prune when score < max(1e-5, threshold), as in the reference
TOPK_MIN_RATE = 0.01   # the top-k schedule never keeps fewer than 1 % of the tokens
FIRST_PRUNED_LAYER = 1  # the threshold of layer 0 is exactly 0: the reference skips that layer


def received_attention(probs: torch.Tensor, live: torch.Tensor, length: torch.Tensor | int) -> torch.Tensor:
    """(B, T) scores from (B, H, T, T) probabilities, ``live`` (B, T) queries that vote (0/1 or bool),
    and ``length``: an int or a (B,) tensor (the N of ``heads * N``)."""
    votes = torch.einsum("bhqk,bq->bk", probs, live.to(probs.dtype))
    if isinstance(length, torch.Tensor):
        length = length.to(probs.dtype)[:, None]
    return votes / (probs.shape[1] * length)


def threshold_base(final_threshold: float, depth: int) -> list[float]:
    """Initial threshold of layer ``i`` (0-based): ``final * i / L``, the reference code's rule.

    (The reference README says the last layer gets exactly ``final``; its code, followed here, gives
    ``final * (L - 1) / L``. The learned deltas move every threshold anyway.)
    """
    return [final_threshold * i / depth for i in range(depth)]


def soft_keep(score: torch.Tensor, threshold: torch.Tensor, temperature: float) -> torch.Tensor:
    """Relaxed keep mask ``sigmoid((score - threshold) / T)``, CLS pinned to 1."""
    mask = torch.sigmoid((score - threshold) / temperature)
    return _with_cls(mask, torch.ones_like(mask[:, :1]))


def hard_keep(score: torch.Tensor, threshold: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """Bool mask of the live tokens whose score reaches ``max(1e-5, threshold)``; CLS always kept."""
    keep = (score >= threshold.clamp_min(MIN_THRESHOLD)) & live.bool()
    return _with_cls(keep, torch.ones_like(keep[:, :1]))


def topk_rates(depth: int, keep_rate: float) -> list[float]:
    """Keep rate of each layer: 1 for the first max(3, ceil(0.15 L)) layers, then linear down to
    ``keep_rate`` at the last layer (SpAtten's schedule, the same as the vision manual baseline)."""
    return [max(TOPK_MIN_RATE, rate) for rate in manual_schedule(depth, keep_rate)]


def topk_keep(score: torch.Tensor, live: torch.Tensor, lengths: torch.Tensor, rate: float) -> torch.Tensor:
    """Bool mask keeping ``round(length * rate)`` live tokens per row (at least CLS) by score."""
    live = live.bool()
    count = torch.round(lengths.to(torch.float64) * rate).long()
    count = torch.minimum(count.clamp_min(1), live.sum(-1))
    cls = torch.zeros_like(live)
    cls[:, CLS_INDEX] = True
    return fill_to_count(score.masked_fill(~live, -math.inf), cls, count) & live


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


def _with_cls(mask: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return torch.cat([value, mask[:, CLS_INDEX + 1:]], dim=1)
