"""Masked execution: dense shapes, differentiable masks. Used for training and as the reference the
pruned execution must reproduce; also records attention logits and hidden states (for the scout,
distillation and the oracle pruner). The loop is :func:`sttabt.executors.core.planned_masked` on the
timm adapter."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..hosts.timm_vit import TimmViTAdapter
from .block import compute_dtype  # noqa: F401  (re-exported)
from .core import planned_masked
from .host import embed, head


ATTENTION_KINDS = ("logits", "probs")


@dataclass
class HostOutput:
    logits: torch.Tensor | None          # (B, classes); None when ``scores_only``
    attention: tuple[torch.Tensor, ...] = ()  # per layer, when recorded: see ``forward_masked``
    hidden: tuple[torch.Tensor, ...] = ()     # embedding output, then each layer's output
    tokens: torch.Tensor | None = None        # (B, T, D) last layer's output, before the final norm


def forward_masked(
    model: nn.Module,
    images: torch.Tensor,
    masks: torch.Tensor | None = None,
    *,
    record: bool = False,
    attention: str = "logits",
    scores_only: bool = False,
) -> HostOutput:
    """Run ``model`` under a (L + 1, B, T) plan (``None``: nothing masked).

    ``record``: keep every layer's attention and hidden states; ``attention`` says which form:
    ``"logits"``, pre-softmax (B, H, T, T), or ``"probs"``, probabilities averaged over heads
    (B, T, T), 6-16x smaller and what top-k pruners read.
    ``scores_only``: stop once the last layer's attention is known (the scout at inference: its
    last MLP and head are not needed); implies ``record``.
    """
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}")
    record = record or scores_only
    run = planned_masked(TimmViTAdapter(model), embed(model, images), masks, record=attention if record else None,
                         scores_only=scores_only, checkpointing=getattr(model, "grad_checkpointing", False))
    if scores_only:
        return HostOutput(None, run.attention, run.hidden)
    token_mask = None
    if masks is not None:  # an avg head averages with the (soft) weights of the last set
        token_mask = masks[-1] if model.global_pool == "avg" else masks[-1] > 0.5
    return HostOutput(head(model, run.tokens, token_mask), run.attention, run.hidden, run.tokens)
