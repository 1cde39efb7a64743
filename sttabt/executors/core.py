"""The one set of executor loops, for any host adapter (:mod:`sttabt.hosts`): planned or online
pruner, masked (dense shapes) or pruned (tokens really removed, batched).

* planned: a (L + 1, B, T) plan made before the host runs (``plan[l]``: keys and values of layer
  ``l``, ``plan[l + 1]``: its outputs). Masked: optionally records each layer's attention and hidden
  states (scouts, teachers, the oracle). Pruned: the tokens are sorted once by how many sets they
  belong to, so every layer's keys and outputs are prefixes of the sequence; per-sample counts run
  each layer on the batch maximum with a key padding mask; static counts given as ints need no host
  sync (the pass compiles and exports). ``planned_pruned_states``: every token's state, pruned.
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
from typing import Callable, Sequence

import torch
from torch.utils.checkpoint import checkpoint

from ..hosts.base import HostAdapter
from .rows import RealRows, worth_packing

# An online decision: (layer, probs (B, H, n, n), live (B, n) bool) -> keep mask (B, n), bool or soft
Decide = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Run:
    tokens: torch.Tensor      # (B, n, D) the last layer's tokens (pruned: packed or sorted, prefix first)
    masks: torch.Tensor | None  # (L + 1, B, T) the sets in the input's token order (online: as decided)
    token_mask: torch.Tensor | None  # (B, n) the real rows of ``tokens`` (None: all)
    attention: tuple[torch.Tensor, ...] = ()  # recorded: each layer's attention (planned_masked)
    hidden: tuple[torch.Tensor, ...] = ()     # recorded: the input, then each layer's output


def survival_order(masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort key of a hard plan: (B, T) token order and (L + 1, B) counts per set."""
    kept = masks > 0.5
    survive = kept.sum(0)                                   # sets each token belongs to
    order = torch.argsort(survive, dim=-1, descending=True, stable=True)
    return order, kept.sum(-1)


def take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (B, n) of (B, T, D) ``x``."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def survival_index(masks: torch.Tensor) -> torch.Tensor:
    """(B, T) token order of a hard plan (see :func:`survival_order`) through ``topk`` on a unique key
    (sets a token belongs to, ties by lower index): the same order as the stable sort, and a form
    every exporter takes (ONNX ``TopK``)."""
    tokens = masks.shape[-1]
    survive = (masks > 0.5).sum(0)
    key = survive * tokens + torch.arange(tokens - 1, -1, -1, device=masks.device)
    return key.topk(tokens, dim=-1).indices


def dense(host: HostAdapter, x: torch.Tensor, valid: torch.Tensor | None = None) -> Run:
    """No plan: the host's own layers (fused attention over the ``valid`` keys)."""
    key_mask = None if valid is None else valid.bool()[:, None, None, :]
    for layer in host.layers:
        x = host.dense_layer(layer, x, key_mask)
    return Run(x, None, None)


def planned_masked(host: HostAdapter, x: torch.Tensor, plan: torch.Tensor | None, valid: torch.Tensor | None = None,
                   *, record: str | None = None, scores_only: bool = False, checkpointing: bool = False) -> Run:
    """Soft or 0/1 plan (None: nothing masked), dense shapes. ``record``: keep each layer's attention
    (``"logits"`` or ``"probs"``, see the adapter's ``recorded_layer``) and the hidden states.
    ``scores_only``: stop at the last layer's attention scores (``tokens``: that layer's input); implies
    ``record`` (default ``"logits"``).
    Without autograd one attention workspace (``host.workspace``) serves every layer; with it,
    ``checkpointing`` recomputes each layer in the backward pass."""
    if scores_only and record is None:
        record = "logits"
    workspace = None if torch.is_grad_enabled() else host.workspace(x)
    seen, hidden = [], [x] if record else []
    last = len(host.layers) - 1
    for layer_index, layer in enumerate(host.layers):
        if scores_only and layer_index == last:
            seen.append(host.scores(layer, x, record, valid, workspace))
            break
        m_in = None if plan is None else plan[layer_index]
        m_out = None if plan is None else plan[layer_index + 1]
        if checkpointing and torch.is_grad_enabled():
            x, scores = checkpoint(host.recorded_layer, layer, x, m_in, m_out, valid, record=record,
                                   use_reentrant=False)
        else:
            x, scores = host.recorded_layer(layer, x, m_in, m_out, valid, record=record, workspace=workspace)
        if record:
            seen.append(scores)
            hidden.append(x)
    return Run(x, plan, None, tuple(seen), tuple(hidden))


def planned_pruned(host: HostAdapter, x: torch.Tensor, plan: torch.Tensor, counts: Sequence[int] | None = None
                   ) -> Run:
    """Hard plan; the set sizes read once from the device (the one host sync). Per-sample sizes: each
    layer runs on the batch's widest sets with a key padding mask, and its per-token work on the real
    output rows only where padding is a large share (:mod:`sttabt.executors.rows`). ``counts``: the
    plan's L + 1 set sizes as ints, equal for every sample (the static budget): the order through
    ``topk``, no key mask, no host sync, static shapes; ``token_mask`` is then None."""
    batch = x.shape[0]
    if counts is None:
        order, sizes = survival_order(plan)
        widest = sizes.amax(-1)
        ragged = sizes.amin(-1) != widest
        widest, ragged, real = torch.stack((widest, ragged.long(), sizes.sum(-1))).tolist()
        position = torch.arange(widest[0], device=x.device)
    else:
        order, widest, ragged = survival_index(plan), list(counts), [0] * len(counts)
    x = take(x, order[:, : widest[0]])
    for layer_index, layer in enumerate(host.layers):
        key_mask = rows = None
        n_out = widest[layer_index + 1]
        if ragged[layer_index]:
            key_mask = (position[: widest[layer_index]] < sizes[layer_index, :, None])[:, None, None, :]
        if ragged[layer_index + 1] and worth_packing(real[layer_index + 1], batch, n_out):
            rows = RealRows(position[:n_out] < sizes[layer_index + 1, :, None], real[layer_index + 1])
        x = host.pruned_layer(layer, x, n_out, key_mask, rows)
    return Run(x, plan, None if counts is not None else position[: widest[-1]] < sizes[-1, :, None])


def planned_pruned_states(host: HostAdapter, x: torch.Tensor, plan: torch.Tensor, record: bool = False) -> Run:
    """Every token's state after the last layer under a hard plan, in the input's order: a row the
    pruned layer does not compute (dropped, or padding of a per-sample count) keeps its last value,
    as in the masked semantics. ``record``: the input and every layer's output too (``hidden``)."""
    order, counts = survival_order(plan)
    widest = counts.amax(-1).tolist()
    index = order[..., None].expand(-1, -1, x.shape[-1])
    state = x.gather(1, index)                      # sorted: prefix tokens, then the longest survivors
    position = torch.arange(state.shape[1], device=x.device)
    states = [state] if record else []
    for layer_index, layer in enumerate(host.layers):
        n_in, n_out = widest[layer_index], widest[layer_index + 1]
        key_mask = (position[:n_in] < counts[layer_index, :, None])[:, None, None, :]
        out = host.pruned_layer(layer, state[:, :n_in], n_out, key_mask)
        kept = (position[:n_out] < counts[layer_index + 1, :, None])[..., None]
        state = torch.cat((torch.where(kept, out, state[:, :n_out]), state[:, n_out:]), 1)
        if record:
            states.append(state)

    def restore(t: torch.Tensor) -> torch.Tensor:  # sorted row j is token order[j]
        return torch.empty_like(t).scatter_(1, index, t)

    return Run(restore(state), plan, None, hidden=tuple(restore(s) for s in states))


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
        widest, narrowest, real = torch.stack((count.amax(), count.amin(), count.sum())).tolist()  # one host sync per layer
        index = order[:, :widest]
        rows = index[:, None, :, None].expand(-1, probs.shape[1], -1, probs.shape[-1])
        live, where = keep.gather(1, index), where.gather(1, index)
        ragged = widest != narrowest
        packed = RealRows(live, real) if ragged and worth_packing(real, batch, widest) else None
        x = host.finish(layer, take(x, index), probs.gather(2, rows), v, None, packed)
        masks.append(torch.zeros_like(masks[0]).scatter_(1, where, live.to(x.dtype)))
    return Run(x, torch.stack(masks), live if ragged else None)


def _pack(x, live, where, keep):
    order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)
    n = int(keep.sum(-1).max())
    index = order[:, :n]
    return take(x, index), live.gather(1, index), where.gather(1, index)
