"""Online execution on a timm host: the shared loops of :mod:`sttabt.executors.core` with the timm
adapter and a vision online pruner (:mod:`sttabt.pruners.online`), which decides after each layer
from the host's own attention, averaged over heads.

* ``forward_online_masked``: dense shapes. Hard: a dropped token's residual stream passes through
  unchanged and it stops being a key (the decisions form a nested plan); soft (LTP's training stage):
  the mask multiplies the layer's output and every token stays a key.
* ``forward_online_pruned``: tokens really removed, batched: after each layer the kept tokens are
  packed to the front (prefix tokens first, then in their order), every layer runs on the batch's
  largest count with a key padding mask when the counts differ.

Both return the logits and the (L + 1, B, T) masks the decisions made (``masks[l + 1]``: the output set
of layer ``l``), in the input's token order, so the FLOPs counter and the reports read them as plans.
"""
from __future__ import annotations

import torch
from torch import nn

from ..hosts.timm_vit import TimmViTAdapter
from ..pruners.layout import TokenLayout
from . import core
from .host import embed, has_token_head, head


def _decider(model: nn.Module, pruner: nn.Module, layout: TokenLayout, tokens: int, soft: bool) -> core.Decide:
    """The pruner's decision on head-averaged probabilities; the last layer of a host whose head reads
    every token (LV-ViT's token head) outputs every token it took in, as in the planned plans."""
    last = len(model.blocks) - 1

    def decide(layer: int, probs: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
        if layer == last and has_token_head(model):
            return live.to(probs.dtype) if soft else live.clone()
        return pruner.decide(layer, probs.mean(1), live, layout=layout, soft=soft, tokens=tokens)
    return decide


def _token_mask(model: nn.Module, masks: torch.Tensor) -> torch.Tensor:
    return masks[-1] if model.global_pool == "avg" else masks[-1] > 0.5


def forward_online_masked(model: nn.Module, images: torch.Tensor, pruner: nn.Module, layout: TokenLayout, *,
                          soft: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and (L + 1, B, T) masks of ``model`` under the online ``pruner``, dense shapes."""
    x = embed(model, images)
    run = core.online_masked(TimmViTAdapter(model), x, _decider(model, pruner, layout, x.shape[1], soft), soft=soft)
    return head(model, run.tokens, _token_mask(model, run.masks)), run.masks


@torch.no_grad()
def forward_online_pruned(model: nn.Module, images: torch.Tensor, pruner: nn.Module, layout: TokenLayout
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and (L + 1, B, T) hard masks of ``model`` under the online ``pruner``, tokens removed."""
    x = embed(model, images)
    run = core.online_pruned(TimmViTAdapter(model), x, _decider(model, pruner, layout, x.shape[1], False))
    tokens, token_mask = run.tokens, run.token_mask
    if token_mask is None and (model.global_pool == "avg" or has_token_head(model)):
        token_mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=x.device)
    if has_token_head(model) and tokens.shape[1] == layout.prefix:  # every patch dropped: one padding row,
        tokens = torch.cat((tokens, tokens.new_zeros(tokens.shape[0], 1, tokens.shape[2])), 1)  # so the token
        token_mask = torch.cat((token_mask, token_mask.new_zeros(token_mask.shape[0], 1)), 1)  # head reads none
    return head(model, tokens, token_mask), run.masks
