"""The one set of executor loops, for any host adapter (:mod:`sttabt.hosts`): planned or online
pruner, masked (dense shapes) or pruned (tokens really removed, batched).

* planned: a (L + 1, B, T) plan made before the host runs (``plan[l]``: keys and values of layer
  ``l``, ``plan[l + 1]``: its outputs). Pruned: the tokens are sorted once by how many sets they
  belong to, so every layer's keys and outputs are prefixes of the sequence; per-sample counts run
  each layer on the batch maximum with a key padding mask.
* online: ``decide(layer, probs, live)`` after each layer's attention (probabilities (B, H, n, n) over
  the live keys, ``live`` (B, n) bool) returns the layer's output set (bool) or, in a soft stage, a
  mask that multiplies the layer's output (every real token stays a key). Hard, masked: a dropped
  token passes through and stops being a key; pruned: the kept tokens are packed to the front after
  the attention, and the rest leave before the attention output and feed-forward.

The adapters hold the maths of a layer in the host's norm order; the loops here hold the sorting,
packing, padding and counts. ``valid`` (B, T) bool: the real tokens of a padded batch (text), None
when every token is real (images).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..hosts.base import HostAdapter

# An online decision: (layer, probs (B, H, n, n), live (B, n) bool) -> keep mask (B, n), bool or soft
Decide = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Run:
    tokens: torch.Tensor      # (B, n, D) the last layer's tokens (pruned: packed or sorted, prefix first)
    masks: torch.Tensor       # (L + 1, B, T) the sets in the input's token order (online: as decided)
    token_mask: torch.Tensor | None  # (B, n) the real rows of ``tokens`` (None: all)


def survival_order(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort key of a hard plan: (B, T) token order and (L + 1, B) counts per set."""
    kept = masks > 0.5
    survive = kept.sum(0)                                   # sets each token belongs to
    order = torch.argsort(survive, dim=-1, descending=True, stable=True)
    return order, kept.sum(-1)


def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (B, n) of (B, T, D) ``x``."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def planned_masked(host: HostAdapter, x: torch.Tensor, plan: torch.Tensor, valid: torch.Tensor | None = None
                   ) -> Run:
    for layer_index, layer in enumerate(host.layers):
        x = host.masked_layer(layer, x, plan[layer_index], plan[layer_index + 1], valid)
    return Run(x, plan, None)


def planned_pruned(host: HostAdapter, x: torch.Tensor, plan: torch.Tensor) -> Run:
    """Hard plan; counts read once from the device (the one host sync)."""
    order, counts = survival_order(plan)
    widest = counts.amax(-1)
    ragged = counts.amin(-1) != widest
    widest, ragged = torch.stack((widest, ragged.long())).tolist()
    x = take(x, order[:, : widest[0]])
    position = torch.arange(widest[0], device=x.device)
    for layer_index, layer in enumerate(host.layers):
        key_mask = None
        if ragged[layer_index]:
            key_mask = (position[: widest[layer_index]] < counts[layer_index, :, None])[:, None, None, :]
        x = host.pruned_layer(layer, x[:, : widest[layer_index]], widest[layer_index + 1], key_mask)
    return Run(x, plan, position[: widest[-1]] < counts[-1, :, None])


def online_masked(host: HostAdapter, x: torch.Tensor, decide: Decide, valid: torch.Tensor | None = None, *,
                  soft: bool = False) -> Run:
    batch, tokens, _ = x.shape
    live = torch.ones(batch, tokens, dtype=torch.bool, device=x.device) if valid is None else valid.bool()
    real = None if valid is None else valid.bool()  # soft: every real token stays a key
    masks = [live.to(x.dtype)]
    for layer_index, layer in enumerate(host.layers):
        probs, v = host.attention(layer, x, real if soft else live)
        keep = decide(layer_index, probs, live)
        if soft:
            x = host.finish(layer, x, probs, v, None) * keep.to(x.dtype).unsqueeze(-1)
            masks.append(keep.to(x.dtype))  # as decided (padding positions too: LTP's padded regulariser reads them)
        else:
            live = keep.bool() & live
            masks.append(live.to(x.dtype))
            x = host.finish(layer, x, probs, v, masks[-1].unsqueeze(-1))
    return Run(x, torch.stack(masks), None)


@torch.no_grad()
def online_pruned(host: HostAdapter, x: torch.Tensor, decide: Decide, valid: torch.Tensor | None = None) -> Run:
    batch, tokens, _ = x.shape
    where = torch.arange(tokens, device=x.device).expand(batch, -1)  # the input index of every row
    live = torch.ones(batch, tokens, dtype=torch.bool, device=x.device) if valid is None else valid.bool()
    masks = [live.to(x.dtype)]
    ragged = valid is not None
    if ragged:  # real tokens first
        x, live, where = _pack(x, live, where, live)
    for layer_index, layer in enumerate(host.layers):
        probs, v = host.attention(layer, x, live if ragged else None)
        keep = decide(layer_index, probs, live).bool() & live
        count = keep.sum(-1)
        order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)  # kept rows first, in order
        widest, narrowest = torch.stack((count.amax(), count.amin())).tolist()  # one host sync per layer
        index = order[:, :widest]
        rows = index[:, None, :, None].expand(-1, probs.shape[1], -1, probs.shape[-1])
        x = host.finish(layer, take(x, index), probs.gather(2, rows), v, None)
        live, where = keep.gather(1, index), where.gather(1, index)
        ragged = widest != narrowest
        masks.append(torch.zeros_like(masks[0]).scatter_(1, where, live.to(x.dtype)))
    return Run(x, torch.stack(masks), live if ragged else None)


def _pack(x, live, where, keep):
    order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)
    n = int(keep.sum(-1).max())
    index = order[:, :n]
    return take(x, index), live.gather(1, index), where.gather(1, index)
