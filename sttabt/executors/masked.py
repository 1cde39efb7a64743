"""Masked execution: dense shapes, differentiable masks. Used for training and as the reference the
pruned execution must reproduce; also records attention logits and hidden states (for the scout,
distillation and the oracle pruner)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .block import attention_scores, masked_block
from .host import embed, head


ATTENTION_KINDS = ("logits", "probs")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matrix products on ``x`` produce: the autocast dtype inside ``torch.autocast`` on
    ``x``'s device (e.g. bfloat16), else ``x``'s own. The reused attention buffer must have it."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


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
    kind = attention if record else None
    x = embed(model, images)
    depth = len(model.blocks)
    workspace = None
    if not torch.is_grad_enabled():  # inference: one attention buffer for every layer
        workspace = x.new_empty(x.shape[0], model.blocks[0].attn.num_heads, x.shape[1], x.shape[1],
                                dtype=compute_dtype(x))
    seen, hidden = [], [x] if record else []
    for layer, block in enumerate(model.blocks):
        if scores_only and layer == depth - 1:
            seen.append(attention_scores(block, x, attention, workspace))
            return HostOutput(None, tuple(seen), tuple(hidden))
        m_in = None if masks is None else masks[layer]
        m_out = None if masks is None else masks[layer + 1]
        if getattr(model, "grad_checkpointing", False) and torch.is_grad_enabled():  # set_grad_checkpointing
            x, scores = checkpoint(masked_block, block, x, m_in, m_out, record=kind, use_reentrant=False)
        else:
            x, scores = masked_block(block, x, m_in, m_out, record=kind, workspace=workspace)
        if record:
            seen.append(scores)
            hidden.append(x)
    token_mask = None
    if masks is not None:  # an avg head averages with the (soft) weights of the last set
        token_mask = masks[-1] if model.global_pool == "avg" else masks[-1] > 0.5
    return HostOutput(head(model, x, token_mask), tuple(seen), tuple(hidden), x)
