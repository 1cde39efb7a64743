"""Run a BERT-family encoder under a pruner, masked (training, dense shapes) or pruned (inference).

Two kinds of pruner (DESIGN.md section 2):
* *online* (LTP thresholds, top-k): decide after each layer's attention, from that attention. Pruned
  tokens stop being keys from the next layer on. Soft masks (LTP's training stage) instead multiply
  the layer's output, and every token stays a key, as in the reference.
* *planned* (STTABT): a ``(L + 1, B, T)`` plan made before the host runs (``plan[l]``: keys and values of
  layer ``l``; ``plan[l + 1]``: its outputs). A token outside a layer's output set passes through it
  unchanged: ``y = x + m_out * (layer(x) - x)`` (the post-norm analogue of masking the residual
  branches), exact for 0/1 masks and differentiable for soft ones.

The pruned executors really remove tokens, batched: each sample's live tokens are packed to the
front and every layer runs on the batch's largest count with a key padding mask.
``counts`` (L + 1, B) in every output: tokens entering each layer, then tokens kept after the last.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from sttabt.executors import survival_order

from .host import (attention_logits, attention_output, feed_forward, key_bias, merge_heads, probs_dropout,
                   query_key_value)

PROB_EPS = 1e-12  # guards the renormalisation of attention rows under a plan

# An online decision: (layer, probs (B, H, n, n), live (B, n) bool) -> keep mask (B, n), bool or soft
Decide = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class EncoderOutput:
    hidden: torch.Tensor                      # (B, n, D) last layer's tokens, CLS first
    counts: torch.Tensor                      # (L + 1, B) float
    masks: tuple[torch.Tensor, ...] = ()      # online, masked: each layer's keep mask (B, T)
    attention: tuple[torch.Tensor, ...] = ()  # recorded pre-softmax logits (B, H, T, T) per layer
    hidden_states: tuple[torch.Tensor, ...] = field(default_factory=tuple)  # embedding, then each layer


def masked_layer(layer: nn.Module, x: torch.Tensor, keys: torch.Tensor, m_in: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer on (B, T, D) tokens; ``keys`` (B, T) says which tokens attention may read; an optional
    plan mask ``m_in`` (B, T) multiplies values and attention over keys (rows renormalised).
    Returns the new tokens, the probabilities (B, H, T, T) and the logits."""
    q, k, v = query_key_value(layer, x)
    logits = attention_logits(layer, q, k)
    probs = (logits + key_bias(keys, logits.dtype)).softmax(-1)
    if m_in is not None:
        probs = probs * m_in[:, None, None, :]
        probs = probs / probs.sum(-1, keepdim=True).clamp_min(PROB_EPS)
        v = v * m_in[:, None, :, None]
    a = attention_output(layer, merge_heads(probs_dropout(layer, probs) @ v), x)
    return feed_forward(layer, a), probs, logits


def run_dense(layers: nn.ModuleList, x: torch.Tensor, valid: torch.Tensor, *, record: bool = False) -> EncoderOutput:
    """No pruning; ``record`` keeps every layer's attention logits and hidden states (scout, teacher).
    Without ``record`` attention is fused (scaled_dot_product_attention), as in transformers."""
    counts = valid.sum(-1).to(x.dtype).expand(len(layers) + 1, -1)
    if not record:
        keys = valid.bool()[:, None, None, :]
        for layer in layers:
            q, k, v = query_key_value(layer, x)
            drop = layer.attention.self.dropout
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, dropout_p=drop.p if drop.training else 0.0)
            x = feed_forward(layer, attention_output(layer, merge_heads(context), x))
        return EncoderOutput(x, counts)
    seen, states = [], [x]
    for layer in layers:
        x, _, logits = masked_layer(layer, x, valid)
        seen.append(logits)
        states.append(x)
    return EncoderOutput(x, counts, attention=tuple(seen), hidden_states=tuple(states))


def run_online_masked(layers: nn.ModuleList, x: torch.Tensor, valid: torch.Tensor, decide: Decide, *,
                      soft: bool) -> EncoderOutput:
    """Online pruner, dense shapes. Hard: a token whose mask is 0 stops being a key; soft: the mask
    multiplies the layer's output and every real token stays a key (the reference's soft stage)."""
    live = valid.bool()
    masks, counts = [], [live.sum(-1)]
    for layer_index, layer in enumerate(layers):
        x, probs, _ = masked_layer(layer, x, live)
        mask = decide(layer_index, probs, live)
        if soft:
            x = x * mask.unsqueeze(-1)
            counts.append((mask * valid).sum(-1))
        else:
            live = mask.bool() & live
            counts.append(live.sum(-1))
        masks.append(mask)
    return EncoderOutput(x, torch.stack(counts).to(x.dtype), masks=tuple(masks))


def _pack(keep: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Indices (B, n) that move each row's kept tokens to the front, in order, and n = the largest count."""
    order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)
    return order, int(keep.sum(-1).max())


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@torch.no_grad()
def run_online_pruned(layers: nn.ModuleList, x: torch.Tensor, valid: torch.Tensor, decide: Decide) -> EncoderOutput:
    """Online pruner, tokens removed: after each layer's attention the kept tokens are packed to the
    front and the rest are dropped before the attention output and feed-forward (hard masks only)."""
    order, n = _pack(valid.bool())
    x, live = _take(x, order[:, :n]), valid.bool().gather(1, order[:, :n])
    counts = [live.sum(-1)]
    for layer_index, layer in enumerate(layers):
        q, k, v = query_key_value(layer, x)
        probs = (attention_logits(layer, q, k) + key_bias(live, q.dtype)).softmax(-1)
        keep = decide(layer_index, probs, live).bool() & live
        order, n = _pack(keep)
        index = order[:, :n]
        a = attention_output(layer, _take(merge_heads(probs @ v), index), _take(x, index))
        x, live = feed_forward(layer, a), keep.gather(1, index)
        counts.append(live.sum(-1))
    return EncoderOutput(x, torch.stack(counts).to(x.dtype))


def run_planned_masked(layers: nn.ModuleList, x: torch.Tensor, valid: torch.Tensor, plan: torch.Tensor
                       ) -> EncoderOutput:
    """Planned pruner, dense shapes: soft or 0/1 plan (L + 1, B, T)."""
    for layer_index, layer in enumerate(layers):
        y, _, _ = masked_layer(layer, x, valid, plan[layer_index])
        x = x + plan[layer_index + 1].unsqueeze(-1) * (y - x)
    return EncoderOutput(x, plan.sum(-1))


@torch.no_grad()
def run_planned_pruned(layers: nn.ModuleList, x: torch.Tensor, plan: torch.Tensor) -> EncoderOutput:
    """Planned pruner, tokens removed: sorted once by how many sets each token belongs to, so every
    layer's keys and outputs are prefixes; fused attention with a key padding mask."""
    order, counts = survival_order(plan)
    widest = counts.amax(-1).tolist()  # the one host sync
    x = _take(x, order[:, : widest[0]])
    position = torch.arange(widest[0], device=x.device)
    for layer_index, layer in enumerate(layers):
        n_in, n_out = widest[layer_index], widest[layer_index + 1]
        x = x[:, :n_in]
        q, k, v = query_key_value(layer, x, n_out)
        keys = (position[:n_in] < counts[layer_index, :, None])[:, None, None, :]
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)
        x = feed_forward(layer, attention_output(layer, merge_heads(context), x[:, :n_out]))
    return EncoderOutput(x, counts.to(x.dtype))
