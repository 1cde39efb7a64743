"""The pruner interface: modules that turn attention maps into a plan of keep masks.

Every pruner here is *planned*: it decides all layers before the host runs, from attention maps,
either the scout's (``source = "approx"``) or the host's own from a dense first pass
(``source = "actual"``, an oracle). ``attention`` names the form it reads: ``"logits"``, pre-softmax
(B, H, T, T), or ``"probs"``, head-averaged probabilities (B, T, T) in which padding keys already
have zero weight. Planned pruners never need the host's attention during the
pruned pass, so the host keeps fused attention. ``plan`` returns a (L + 1, B, T) plan (see
:mod:`sttabt.pruners.masks`).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .backtrack import backtrack_topk, forward_topk
from .concrete import KEEP_LAMBDA_VISION, concrete_masks, concrete_regulariser
from .layout import DEFAULT_LAYOUT, TokenLayout
from .masks import backward_counts, check_budget, check_keep, check_static_counts, forward_counts

LTP_FULL_LAYERS_MIN = 3       # manual schedule: at least this many leading layers keep everything,
LTP_FULL_LAYERS_SHARE = 0.15  # or this share of the depth, whichever is more


class PlannedPruner(nn.Module):
    """Base class: ``plan(attention, hard=..., budget=..., valid=None) -> (L + 1, B, T)`` masks."""

    online = False              # planned: decides every layer before the host runs
    attention = "probs"         # which attention form ``plan`` reads: "logits" or "probs"
    source = "approx"           # whose attention the plan reads: "approx" (scout) or "actual" (host)
    default_budget = "fixed"    # batching mode used when the caller does not choose one (see masks.BUDGETS)
    trainable = False           # True when the plan is differentiable (soft masks)

    def plan(self, attention: Sequence[torch.Tensor], *, hard: bool = True, budget: str | None = None,
             valid: torch.Tensor | None = None, layout: TokenLayout | None = None) -> torch.Tensor:
        """``layout``: the host's prefix tokens and pooling (default: one class token, a token head)."""
        raise NotImplementedError

    def static_counts(self, tokens: int, layout: TokenLayout | None = None) -> tuple[int, ...]:
        """The ``L + 1`` token counts every sample keeps under ``budget="static"`` (plain ints, known
        before any data is seen: static shapes), for a host of ``layout``."""
        raise NotImplementedError(f"{type(self).__name__} has no static budget")

    def _hard_only(self, hard: bool) -> None:
        if not hard:
            raise ValueError(f"{type(self).__name__} makes hard masks only; pass hard=True "
                             "(soft masks come from the 'concrete' pruner)")


class ConcretePruner(PlannedPruner):
    """STTABT's trained pruner: one learnable ``p_logit`` per layer (section 3.3)."""

    attention = "logits"
    default_budget = "per_sample"
    trainable = True

    def __init__(self, depth: int, p_logit: float = 0.0, keep_lambda: float = KEEP_LAMBDA_VISION):
        super().__init__()
        p_logit = float(p_logit)
        if not math.isfinite(p_logit):
            raise ValueError(f"p_logit must be a finite number, got {p_logit}")
        self.target_p_logit = p_logit
        self.keep_lambda = keep_lambda
        self.p_logits = nn.Parameter(torch.full((depth,), p_logit))
        # counts of the static budget, one per set of the plan; all zero until sttabt.calibrate sets them
        self.register_buffer("calibrated_counts", torch.zeros(depth + 1, dtype=torch.long))
        self._counts: tuple[int, ...] | None = None  # the buffer as ints (shapes must not read tensors)

    def set_static_counts(self, counts, tokens: int, layout: TokenLayout | None = None) -> tuple[int, ...]:
        """Store calibrated static counts (``L + 1`` non-increasing ints, the last one 1: CLS; for other
        ``layout``s the prefix tokens, or for an ``avg`` head the one before)."""
        layout = layout or DEFAULT_LAYOUT
        counts = check_static_counts(counts, tokens, self.p_logits.numel())
        if counts[-1] != layout.last_count(counts[-2]) or counts[-1] < layout.prefix:
            raise ValueError(f"the last layer outputs the prefix tokens only (an avg head: the tokens it takes in): "
                             f"the last static count must be {layout.last_count(counts[-2])}, got {counts[-1]}")
        with torch.no_grad():
            self.calibrated_counts.copy_(torch.tensor(counts))
        self._counts = counts
        return counts

    def static_counts(self, tokens: int, layout: TokenLayout | None = None) -> tuple[int, ...]:
        if self._counts is None:
            raise ValueError("the concrete pruner's static budget needs calibrated counts: call "
                             "sttabt.calibrate(model, images) on a few batches of real data first "
                             "(they are saved with the model)")
        if self._counts[0] > tokens:
            raise ValueError(f"calibrated for {self._counts[0]} tokens, the input has {tokens}")
        return self._counts

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "calibrated_counts"
        if key not in state_dict:  # checkpoints from before static budgets: not calibrated
            state_dict[key] = torch.zeros_like(self.calibrated_counts)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        counts = tuple(int(c) for c in self.calibrated_counts.tolist())
        self._counts = counts if all(counts) else None

    def set_p_logit(self, value: float) -> None:
        """Re-target: every layer's logit to ``value`` (the target keep ratio is sigmoid(value))."""
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"p_logit must be a finite number, got {value}")
        self.target_p_logit = value
        with torch.no_grad():
            self.p_logits.fill_(value)

    def plan(self, attention, *, hard=True, budget=None, valid=None, layout=None):
        budget = budget or self.default_budget
        counts = self.static_counts(attention[0].shape[-1]) if budget == "static" else None
        return concrete_masks(attention, self.p_logits, hard=hard, budget=budget, valid=valid, counts=counts,
                              layout=layout or DEFAULT_LAYOUT)

    def regulariser(self, soft_masks: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        return concrete_regulariser(self.p_logits, soft_masks, self.target_p_logit,
                                    keep_lambda=self.keep_lambda, valid=valid)

    def extra_repr(self) -> str:
        return f"depth={self.p_logits.numel()}, target_p_logit={self.target_p_logit}"


def _schedule(keep: float | Sequence[float], depth: int) -> list[float]:
    if isinstance(keep, (int, float)):
        return [check_keep(keep)] * depth
    keep = [check_keep(k) for k in keep]
    if len(keep) != depth:
        raise ValueError(f"need one keep ratio per layer ({depth}), got {len(keep)}")
    return keep


class BacktrackPruner(PlannedPruner):
    """Training-free ABT top-k (section 3.2) on the scout's or, as an oracle, the host's attention."""

    def __init__(self, depth: int, keep: float | Sequence[float] = 0.5, source: str = "approx"):
        super().__init__()
        if source not in ("approx", "actual"):
            raise ValueError(f"source must be 'approx' or 'actual', got {source!r}")
        self.source = source
        self.keep = _schedule(keep, depth)

    def plan(self, attention, *, hard=True, budget=None, valid=None, layout=None):
        self._hard_only(hard)
        return backtrack_topk(attention, self.keep, budget=budget or self.default_budget, valid=valid,
                              layout=layout or DEFAULT_LAYOUT)

    def static_counts(self, tokens: int, layout=None) -> tuple[int, ...]:
        return backward_counts(self.keep, tokens, layout)  # what the "fixed" budget keeps too

    def extra_repr(self) -> str:
        return f"source={self.source}, keep={self.keep}"


def manual_schedule(depth: int, keep: float) -> list[float]:
    """LTP's hand-set schedule: the first max(3, ceil(0.15 L)) layers take in every token, then
    the ratio falls linearly to ``keep`` at the last layer."""
    keep = check_keep(keep)
    full = min(depth, max(LTP_FULL_LAYERS_MIN, math.ceil(LTP_FULL_LAYERS_SHARE * depth)))
    tail = depth - full
    return [1.0] * full + [1.0 - (1.0 - keep) * (i + 1) / tail for i in range(tail)]


def keep_schedule(keep: float | Sequence[float], depth: int) -> list[float]:
    """Per-layer keep ratios of the forward-selecting pruners: a float goes through
    :func:`manual_schedule`, a sequence is checked (one ratio in (0, 1] per layer)."""
    return manual_schedule(depth, keep) if isinstance(keep, (int, float)) else _schedule(keep, depth)


class ManualTopKPruner(PlannedPruner):
    """Baseline: hand-set per-layer ratios, tokens chosen forwards by the attention they receive."""

    def __init__(self, depth: int, keep: float | Sequence[float] = 0.5):
        super().__init__()
        self.keep = keep_schedule(keep, depth)

    def plan(self, attention, *, hard=True, budget=None, valid=None, layout=None):
        self._hard_only(hard)
        check_budget(budget or self.default_budget)  # counts are equal across the batch either way
        return forward_topk(attention, self.keep, layout=layout or DEFAULT_LAYOUT)

    def static_counts(self, tokens: int, layout=None) -> tuple[int, ...]:
        return forward_counts(self.keep, tokens, layout)  # every budget keeps these counts

    def extra_repr(self) -> str:
        return f"keep={[round(k, 3) for k in self.keep]}"


PRUNERS = {
    "concrete": "STTABT concrete masks with learnable per-layer p-logits (trained)",
    "abt": "attention back-tracking top-k on the scout's approximated attention (training-free)",
    "abt_oracle": "attention back-tracking top-k on the host's actual attention (needs a dense pass)",
    "manual": "hand-set per-layer top-k schedule, tokens chosen forwards by received attention",
    "evit_scout": "EViT-style top-k on the CLS attention of the scout, planned (training-free)",
    "evit": "EViT: top-k on the host's own CLS attention, decided online after each layer (training-free)",
    "ltp": "LTP: learned per-layer thresholds on the attention a token receives, online (trained)",
}
ONLINE = ("evit", "ltp")  # decide during the host's pass, from its own attention: no scout


def create_pruner(name: str, depth: int, *, p_logit: float = 0.0,
                  keep: float | Sequence[float] | None = None, threshold: float | None = None) -> nn.Module:
    """Build a pruner by name (see ``PRUNERS``); ``keep`` defaults to 0.5 for the top-k pruners;
    ``threshold``: LTP's final token threshold (the last layer's, before learning)."""
    if threshold is not None and name != "ltp":
        raise ValueError(f"threshold is LTP's final token threshold: it needs pruner='ltp', not {name!r}")
    if name == "concrete":
        if keep is not None:
            raise ValueError("the concrete pruner sets its keep ratio through p_logit (target sigmoid(p_logit)), "
                             "not keep; use a top-k pruner ('abt', 'abt_oracle', 'manual', 'evit') for a keep ratio")
        return ConcretePruner(depth, p_logit)
    if name == "ltp":
        from .online import DEFAULT_FINAL_THRESHOLD, LTPPruner

        if keep is not None:
            raise ValueError("the ltp pruner keeps what reaches its learned thresholds: set threshold=..., not keep")
        return LTPPruner(depth, DEFAULT_FINAL_THRESHOLD if threshold is None else threshold)
    keep = 0.5 if keep is None else keep
    if name == "abt":
        return BacktrackPruner(depth, keep, source="approx")
    if name == "abt_oracle":
        return BacktrackPruner(depth, keep, source="actual")
    if name == "manual":
        return ManualTopKPruner(depth, keep)
    if name == "evit_scout":
        from .cls_topk import EViTPruner  # cls_topk builds on this module's base class

        return EViTPruner(depth, keep, source="approx")
    if name == "evit":
        from .online import EViTOnlinePruner

        return EViTOnlinePruner(depth, keep)
    raise ValueError(f"unknown pruner {name!r}: choose one of {', '.join(PRUNERS)}")
