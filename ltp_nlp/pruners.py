"""Online pruners for text: LTP's learned thresholds and the top-k baseline.

Both read the host's own attention after each layer. ``decide(layer, probs, live, lengths, soft=...)``
returns the keep mask of that layer's tokens: soft (a float in (0, 1), training) or hard (bool).
Planned pruners (STTABT) come from :mod:`sttabt.pruners` unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from sttabt.pruners.thresholds import DEFAULT_TEMPERATURE, thresholds_in_use

from .ltp import (FIRST_PRUNED_LAYER, hard_keep, mask_means, padded_mask_means, received_attention, soft_keep,
                  threshold_base, topk_keep, topk_rates)


def _normaliser(scoring_mode: str, score_length: int, lengths: torch.Tensor) -> torch.Tensor | int:
    return score_length if scoring_mode == "mean" else lengths


class ThresholdPruner(nn.Module):
    """LTP ``absolute_threshold``: layer ``i`` keeps a token whose score reaches
    ``threshold_base[i] + threshold_delta[i]``; the deltas are learned (their own optimiser).

    Layer 0 is skipped, as in the reference (its threshold is exactly 0): it keeps every token, has no
    soft mask (1 everywhere) and no regulariser term, and never reads ``threshold_delta[0]``, which
    therefore never gets a gradient. The entry stays in the (L,) parameter so that checkpoints keep
    one layout; a value an older version learned there is loaded and ignored.
    """

    soft_capable = True

    def __init__(self, depth: int, final_token_threshold: float, scoring_mode: str = "mean", score_length: int = 128):
        super().__init__()
        self.scoring_mode = scoring_mode
        self.score_length = score_length
        # derived from the config, not saved: a new final_token_threshold takes effect on load
        self.register_buffer("threshold_base", torch.tensor(threshold_base(final_token_threshold, depth)),
                             persistent=False)
        self.threshold_delta = nn.Parameter(torch.zeros(depth))

    def thresholds(self) -> torch.Tensor:
        """(L,) the thresholds in use: 0 for the skipped layer 0, ``base + delta`` after it."""
        return thresholds_in_use(self.threshold_base, self.threshold_delta)

    def decide(self, layer: int, probs: torch.Tensor, live: torch.Tensor, lengths: torch.Tensor, *,
               soft: bool, temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
        if layer < FIRST_PRUNED_LAYER:  # skipped: keep everything, no mask
            return torch.ones_like(live, dtype=probs.dtype) if soft else live.bool()
        score = received_attention(probs, live, _normaliser(self.scoring_mode, self.score_length, lengths))
        threshold = self.thresholds()[layer]
        if soft:
            return soft_keep(score, threshold, temperature)
        return hard_keep(score, threshold, live)

    def regulariser(self, masks, valid: torch.Tensor, *, temperature: float = DEFAULT_TEMPERATURE,
                    pad_to: int | None = None) -> torch.Tensor:
        """LTP's ``sum_l mean(mask_l)`` over the pruned layers ``1 .. L-1`` (the trainer weighs it by
        lambda). The mean is over real tokens, or, with ``pad_to=N`` (the reference's biased variant),
        over N positions per sample, as if every batch had been padded to N: positions past the batch's
        width hold the mask of a zero score, ``sigmoid(-threshold_l / T)``, what padding gets."""
        masks = list(masks)[FIRST_PRUNED_LAYER:]
        if pad_to is None:
            return mask_means(masks, valid).sum()
        zero = torch.zeros((), dtype=masks[0].dtype, device=masks[0].device)
        pad_values = torch.sigmoid((zero - self.thresholds()[FIRST_PRUNED_LAYER:]) / temperature)
        return padded_mask_means(masks, pad_values, pad_to).sum()

    def extra_repr(self) -> str:
        return f"depth={self.threshold_delta.numel()}, scoring_mode={self.scoring_mode!r}"


class TopKPruner(nn.Module):
    """LTP's ``topk`` baseline: keep ``round(length * rate_l)`` tokens by the attention they receive."""

    soft_capable = False

    def __init__(self, depth: int, token_keep_rate: float):
        super().__init__()
        self.rates = topk_rates(depth, token_keep_rate)

    def decide(self, layer: int, probs: torch.Tensor, live: torch.Tensor, lengths: torch.Tensor, *,
               soft: bool, temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
        if soft:
            raise ValueError("prune_mode 'topk' has hard masks only: use masking_mode='hard'")
        if self.rates[layer] >= 1:
            return live.bool()
        return topk_keep(received_attention(probs, live, 1), live, lengths, self.rates[layer])

    def extra_repr(self) -> str:
        return f"rates={[round(r, 3) for r in self.rates]}"
