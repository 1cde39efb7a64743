"""Online pruners: they decide after each layer's attention, from the host's own attention.

``decide(layer, probs, live, *, layout, soft)`` gets layer ``layer``'s attention probabilities averaged
over heads, (B, T, T) (queries x keys, over the live keys), and ``live`` (B, T) bool, the tokens the
layer took in. It returns the layer's output set: bool (hard, a subset of ``live``, the prefix tokens
always in) or a soft mask in (0, 1] (training; only :class:`LTPPruner` has one). The last layer of a
token head outputs the prefix tokens only; of an ``avg`` head, every token it took in (the head
averages them), as for the planned pruners (see :mod:`sttabt.pruners.layout`).

* :class:`LTPPruner` (Learned Token Pruning, KDD 2022): the maths of :mod:`sttabt.pruners.thresholds`
  (shared with text) with ``N`` the image's token count and the prefix tokens always kept.
* :class:`EViTOnlinePruner` (EViT, ICLR 2022): after layer ``l``'s attention, the class token's row
  ranks the live tokens and the best ``ceil(keep[l + 1] * T)`` go on (prefix tokens always).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .layout import DEFAULT_LAYOUT, TokenLayout
from .masks import CLS_INDEX, fill_to_count, forward_counts
from .pruners import keep_schedule
from .thresholds import (DEFAULT_TEMPERATURE, FIRST_PRUNED_LAYER, hard_keep, received_attention, soft_keep,
                         threshold_base, thresholds_in_use)

DEFAULT_LTP_LAMBDA = 0.1    # weight of LTP's regulariser sum_l mean(mask_l) (reference: 0.01 .. 0.2)
DEFAULT_FINAL_THRESHOLD = 1e-2  # LTP's final_token_threshold; a uniform map scores every token 1 / T


class OnlinePruner(nn.Module):
    """Base class of the pruners that decide after each layer from the host's own attention."""

    online = True
    source = "host"          # they read the host's attention during its own pass: no scout, no extra pass
    attention = "probs"
    default_budget = "per_sample"
    trainable = False        # True when ``decide(soft=True)`` gives a differentiable mask

    def decide(self, layer: int, probs: torch.Tensor, live: torch.Tensor, *, layout: TokenLayout = DEFAULT_LAYOUT,
               soft: bool = False, tokens: int | None = None) -> torch.Tensor:
        """``tokens``: the host's whole sequence length ``T`` (``live`` may be narrower once tokens are
        removed); default ``live``'s width."""
        raise NotImplementedError

    def static_counts(self, tokens: int, layout: TokenLayout | None = None) -> tuple[int, ...]:
        raise ValueError(f"{type(self).__name__} decides per image: it has no static budget "
                         "(use budget='per_sample', or a planned pruner for static shapes)")

    def _last(self, live: torch.Tensor, layout: TokenLayout, soft: bool) -> torch.Tensor:
        """The last layer's output set: the prefix tokens (token head) or all it took in (avg head)."""
        keep = live.clone() if layout.averaged else layout.always(*live.shape, device=live.device)
        return keep.to(torch.float32) if soft else keep


class LTPPruner(OnlinePruner):
    """LTP's ``absolute_threshold`` mode on images: thresholds ``final * l / L + delta_l`` (see the
    module notes). ``temperature``: T of the soft stage; ``keep_lambda``: weight of the regulariser."""

    trainable = True

    def __init__(self, depth: int, final_token_threshold: float = DEFAULT_FINAL_THRESHOLD,
                 temperature: float = DEFAULT_TEMPERATURE, keep_lambda: float = DEFAULT_LTP_LAMBDA):
        super().__init__()
        final_token_threshold, temperature = float(final_token_threshold), float(temperature)
        if not math.isfinite(final_token_threshold) or final_token_threshold < 0:
            raise ValueError(f"final_token_threshold must be a finite number >= 0, got {final_token_threshold}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.final_token_threshold, self.temperature, self.keep_lambda = final_token_threshold, temperature, keep_lambda
        self.register_buffer("threshold_base", torch.tensor(threshold_base(final_token_threshold, depth)),
                             persistent=False)
        self.threshold_delta = nn.Parameter(torch.zeros(depth))

    def thresholds(self) -> torch.Tensor:
        """(L,) thresholds in use: 0 for the skipped layer 0, ``base + delta`` after it."""
        return thresholds_in_use(self.threshold_base, self.threshold_delta)

    def decide(self, layer, probs, live, *, layout=DEFAULT_LAYOUT, soft=False, tokens=None):
        depth = self.threshold_delta.numel()
        if layer == depth - 1:
            return self._last(live, layout, soft)
        if layer < FIRST_PRUNED_LAYER:
            return torch.ones_like(live, dtype=probs.dtype) if soft else live.clone()
        score = received_attention(probs, live, tokens or live.shape[-1])
        threshold = self.thresholds()[layer]
        prefix = layout.always(*live.shape, device=live.device)
        if soft:
            return soft_keep(score, threshold, self.temperature, prefix)
        return hard_keep(score, threshold, live, prefix)

    def regulariser(self, masks: torch.Tensor, layout: TokenLayout = DEFAULT_LAYOUT) -> torch.Tensor:
        """``lambda * sum_l mean(mask_l)`` over the pruned layers' soft output masks (``masks[l + 1]`` of
        layer ``l``, ``l = 1 .. L - 2``; the last layer's is fixed), the mean over the patches."""
        outputs = masks[FIRST_PRUNED_LAYER + 1: -1, :, layout.prefix:]
        return self.keep_lambda * outputs.mean(dim=(1, 2)).sum()

    def extra_repr(self) -> str:
        return (f"depth={self.threshold_delta.numel()}, final_token_threshold={self.final_token_threshold}, "
                f"temperature={self.temperature}")


class EViTOnlinePruner(OnlinePruner):
    """EViT, online: the class token's attention of layer ``l`` (its own, over the live tokens) keeps
    ``ceil(keep[l + 1] * T)`` tokens. ``keep``: a float uses the manual schedule (every token for the
    first layers, then linearly down), a list gives one ratio per layer (``keep[0]`` is not used)."""

    default_budget = "fixed"  # every image keeps the same counts

    def __init__(self, depth: int, keep: float | Sequence[float] = 0.5):
        super().__init__()
        self.keep = keep_schedule(keep, depth)

    def decide(self, layer, probs, live, *, layout=DEFAULT_LAYOUT, soft=False, tokens=None):
        if soft:
            raise ValueError("EViT makes hard masks only; pass hard=True (soft masks: 'ltp' or 'concrete')")
        if layout.prefix < 1:
            raise ValueError("EViT ranks tokens by the class token's attention: the host needs a class token")
        if layer == len(self.keep) - 1:
            return self._last(live, layout, soft)
        batch, width = live.shape
        score = probs[:, CLS_INDEX].masked_fill(~live, -math.inf)
        wanted = torch.full((batch,), layout.count(self.keep[layer + 1], tokens or width), dtype=torch.long,
                            device=live.device)
        return fill_to_count(score, layout.always(batch, width, device=live.device),
                             torch.minimum(live.sum(-1), wanted)) & live

    def static_counts(self, tokens: int, layout: TokenLayout | None = None) -> tuple[int, ...]:
        return forward_counts(self.keep, tokens, layout)

    def extra_repr(self) -> str:
        return f"keep={[round(k, 3) for k in self.keep]}"
