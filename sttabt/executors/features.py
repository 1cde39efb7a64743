"""Every token's state under a plan, for ``forward_features`` / ``forward_intermediates``.

The masked semantics (DESIGN.md section 3.4): a token outside a layer's output set passes through
that layer unchanged, so a dropped token keeps the value it had when it was dropped. The pruned
executor computes only the kept rows; here the rows it does not compute keep their last value, and
the tokens are put back in their original order. With per-sample counts the padding rows (computed
for the batch maximum) are restored too, so each sample is what the masked executor gives it.
The loop is :func:`sttabt.executors.core.planned_pruned_states` on the timm adapter.
"""
from __future__ import annotations

import torch
from torch import nn

from ..hosts.timm_vit import TimmViTAdapter
from .core import planned_pruned_states
from .host import embed


def pruned_tokens(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, *, record: bool = False
                  ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """All (B, T, D) tokens after the last block (before the final norm), original order, under a hard
    (L + 1, B, T) plan; with ``record`` also the embedding output and every block's output, likewise."""
    run = planned_pruned_states(TimmViTAdapter(model), embed(model, images), masks, record)
    return run.tokens, run.hidden
