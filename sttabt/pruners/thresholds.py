"""LTP's threshold maths (Learned Token Pruning, KDD 2022), once, for images and text.

A token's *score* at a layer is the attention it receives: summed over the live queries, averaged
over heads and divided by ``N`` (the paper's ``H * N``). A token is kept when its score reaches the
layer's threshold ``final * l / L + delta_l`` (``delta`` learned). Layer 0 is skipped: its threshold is
exactly 0, as in the reference. The soft stage multiplies a layer's output by
``sigmoid((score - threshold) / T)``; the hard stage drops the tokens below ``max(1e-5, threshold)``.
The tokens in ``always`` (the class token, and the other prefix tokens of a ViT) are always kept.

Used by :class:`sttabt.pruners.online.LTPPruner` (images) and :class:`ltp_nlp.pruners.ThresholdPruner`
(text); they differ only in what ``N`` is (the image's token count; for text a fixed length or the
sentence's own) and in how they are stored.
"""
from __future__ import annotations

import torch

MIN_THRESHOLD = 1e-5        # hard rule: prune when score < max(1e-5, threshold), as in the reference
FIRST_PRUNED_LAYER = 1      # the threshold of layer 0 is exactly 0: the reference skips that layer
DEFAULT_TEMPERATURE = 1e-3  # T of the soft stage; the reference sweeps 1e-4 .. 2e-3


def threshold_base(final_threshold: float, depth: int) -> list[float]:
    """Initial threshold of layer ``i`` (0-based): ``final * i / L``, the reference code's rule.

    (The reference README says the last layer gets exactly ``final``; its code, followed here, gives
    ``final * (L - 1) / L``. The learned deltas move every threshold anyway.)
    """
    return [final_threshold * i / depth for i in range(depth)]


def thresholds_in_use(base: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """(L,) thresholds: 0 for the skipped layer 0, ``base + delta`` after it (``delta[0]`` is never read,
    so it never gets a gradient)."""
    learned = base + delta
    return torch.cat((torch.zeros_like(learned[:FIRST_PRUNED_LAYER]), learned[FIRST_PRUNED_LAYER:]))


def received_attention(probs: torch.Tensor, live: torch.Tensor, length: torch.Tensor | int) -> torch.Tensor:
    """(B, T) scores from probabilities, per head (B, H, T, T) or averaged over heads (B, T, T);
    ``live`` (B, T): the queries that vote (0/1 or bool); ``length``: the ``N``, an int or a (B,) tensor."""
    if isinstance(length, torch.Tensor) and length.dim() == 1:  # (a traced int is a 0-dim tensor)
        length = length.to(probs.dtype)[:, None]
    if probs.dim() == 4:
        return torch.einsum("bhqk,bq->bk", probs, live.to(probs.dtype)) / (probs.shape[1] * length)
    return torch.einsum("bqk,bq->bk", probs, live.to(probs.dtype)) / length


def soft_keep(score: torch.Tensor, threshold: torch.Tensor, temperature: float, always: torch.Tensor
              ) -> torch.Tensor:
    """Relaxed keep mask ``sigmoid((score - threshold) / T)``, 1 on the ``always`` (B, T) bool tokens."""
    return torch.maximum(torch.sigmoid((score - threshold) / temperature), always.to(score.dtype))


def hard_keep(score: torch.Tensor, threshold: torch.Tensor, live: torch.Tensor, always: torch.Tensor
              ) -> torch.Tensor:
    """Bool mask of the ``live`` tokens whose score reaches ``max(1e-5, threshold)``, and the ``always``
    ones."""
    return ((score >= threshold.clamp_min(MIN_THRESHOLD)) | always) & live.bool()
