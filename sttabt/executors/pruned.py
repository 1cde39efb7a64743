"""Pruned execution: tokens are really removed, batched.

One sort replaces every per-layer gather: tokens are ordered by how many sets of the plan they
belong to (CLS first, then the tokens that survive longest), so each layer's input and output sets
are prefixes of the sorted sequence and a layer only slices. With equal counts across the batch (the
``"fixed"`` budget) shapes are static and attention has no mask; with per-sample counts each layer
runs on the batch maximum and a key padding mask hides the padding.
"""
from __future__ import annotations

import torch
from torch import nn

from .block import pruned_block
from .host import embed, head


def survival_order(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort key of a hard plan: (B, T) token order and (L + 1, B) counts per set."""
    kept = masks > 0.5
    survive = kept.sum(0)                                   # sets each token belongs to
    order = torch.argsort(survive, dim=-1, descending=True, stable=True)
    return order, kept.sum(-1)


def forward_pruned(model: nn.Module, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` when each layer runs only on the tokens of a hard (L + 1, B, T) plan."""
    x = embed(model, images)
    order, counts = survival_order(masks)
    widest = counts.amax(-1)
    ragged = counts.amin(-1) != widest
    widest, ragged = torch.stack((widest, ragged.long())).tolist()  # the one host sync
    x = x.gather(1, order[:, : widest[0], None].expand(-1, -1, x.shape[-1]))
    position = torch.arange(widest[0], device=x.device)
    for layer, block in enumerate(model.blocks):
        key_mask = None
        if ragged[layer]:
            key_mask = (position[: widest[layer]] < counts[layer, :, None])[:, None, None, :]
        x = pruned_block(block, x, widest[layer + 1], key_mask)
    token_mask = position[: widest[-1]] < counts[-1, :, None]
    return head(model, x, token_mask)
