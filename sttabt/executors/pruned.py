"""Pruned execution: tokens are really removed, batched.

One sort replaces every per-layer gather: tokens are ordered by how many sets of the plan they
belong to (CLS first, then the tokens that survive longest), so each layer's input and output sets
are prefixes of the sorted sequence and a layer only slices. With equal counts across the batch (the
``"fixed"`` budget) attention has no mask; with per-sample counts each layer runs on the batch maximum
and a key padding mask hides the padding. Both read the counts from the plan, one host sync.
With static counts given as ints (the ``"static"`` budget) nothing is read back from the device: the
shapes are known ahead, so the pass compiles (``torch.compile(fullgraph=True)``) and exports.
The loop is :func:`sttabt.executors.core.planned_pruned` on the timm adapter.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..hosts.timm_vit import TimmViTAdapter
from .core import planned_pruned, survival_index, survival_order  # noqa: F401  (re-exported)
from .host import embed, head


def forward_pruned(model: nn.Module, images: torch.Tensor, masks: torch.Tensor,
                   counts: Sequence[int] | None = None) -> torch.Tensor:
    """Logits of ``model`` when each layer runs only on the tokens of a hard (L + 1, B, T) plan.

    ``counts``: the plan's ``L + 1`` set sizes as ints when every sample has them (static budget):
    no host sync, static shapes. They must be the plan's (the static pruners guarantee it)."""
    if counts is not None:
        if len(counts) != masks.shape[0]:
            raise ValueError(f"need one count per set of the plan ({masks.shape[0]}), got {len(counts)}")
        counts = [int(c) for c in counts]
    run = planned_pruned(TimmViTAdapter(model), embed(model, images), masks, counts)
    return head(model, run.tokens, run.token_mask)
