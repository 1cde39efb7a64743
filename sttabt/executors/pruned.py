"""Pruned execution: tokens are really removed, batched.

One sort replaces every per-layer gather: tokens are ordered by how many sets of the plan they
belong to (CLS first, then the tokens that survive longest), so each layer's input and output sets
are prefixes of the sorted sequence and a layer only slices. With equal counts across the batch (the
``"fixed"`` budget) attention has no mask; with per-sample counts each layer runs on the batch maximum
and a key padding mask hides the padding. Both read the counts from the plan, one host sync.
With static counts given as ints (the ``"static"`` budget) nothing is read back from the device: the
shapes are known ahead, so the pass compiles (``torch.compile(fullgraph=True)``) and exports.
"""
from __future__ import annotations

from typing import Sequence

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


def survival_index(masks: torch.Tensor) -> torch.Tensor:
    """(B, T) token order of a hard plan (see :func:`survival_order`) through ``topk`` on a unique key
    (sets a token belongs to, ties by lower index): the same order as the stable sort, and a form
    every exporter takes (ONNX ``TopK``)."""
    tokens = masks.shape[-1]
    survive = (masks > 0.5).sum(0)
    key = survive * tokens + torch.arange(tokens - 1, -1, -1, device=masks.device)
    return key.topk(tokens, dim=-1).indices


def _forward_static(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, counts: Sequence[int]
                    ) -> torch.Tensor:
    x = embed(model, images)
    order = survival_index(masks)[:, : counts[0]]
    x = x.gather(1, order[:, :, None].expand(-1, -1, x.shape[-1]))
    for layer, block in enumerate(model.blocks):
        x = pruned_block(block, x, counts[layer + 1])
    return head(model, x, None)


def forward_pruned(model: nn.Module, images: torch.Tensor, masks: torch.Tensor,
                   counts: Sequence[int] | None = None) -> torch.Tensor:
    """Logits of ``model`` when each layer runs only on the tokens of a hard (L + 1, B, T) plan.

    ``counts``: the plan's ``L + 1`` set sizes as ints when every sample has them (static budget):
    no host sync, static shapes. They must be the plan's (the static pruners guarantee it)."""
    if counts is not None:
        if len(counts) != masks.shape[0]:
            raise ValueError(f"need one count per set of the plan ({masks.shape[0]}), got {len(counts)}")
        return _forward_static(model, images, masks, [int(c) for c in counts])
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
