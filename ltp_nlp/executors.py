"""Run a BERT-family encoder under a pruner, masked (training, dense shapes) or pruned (inference):
the shared loops of :mod:`sttabt.executors.core` on the text adapter (:class:`sttabt.hosts.bert.BertAdapter`),
and the dense (recording) pass of the scout and the teacher.

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

import torch
from torch import nn

from sttabt.executors import core
from sttabt.executors.core import Decide  # (layer, probs, live) -> keep mask
from sttabt.hosts.bert import BertAdapter


@dataclass
class EncoderOutput:
    hidden: torch.Tensor                      # (B, n, D) last layer's tokens, CLS first
    counts: torch.Tensor                      # (L + 1, B) float
    masks: tuple[torch.Tensor, ...] = ()      # online, masked: each layer's keep mask (B, T)
    attention: tuple[torch.Tensor, ...] = ()  # recorded pre-softmax logits (B, H, T, T) per layer
    hidden_states: tuple[torch.Tensor, ...] = field(default_factory=tuple)  # embedding, then each layer


def run_dense(layers: nn.ModuleList, x: torch.Tensor, valid: torch.Tensor, *, record: bool = False) -> EncoderOutput:
    """No pruning; ``record`` keeps every layer's attention logits and hidden states (scout, teacher:
    :func:`sttabt.executors.core.planned_masked` without a plan). Without ``record`` attention is fused
    (scaled_dot_product_attention), as in transformers (:func:`sttabt.executors.core.dense`)."""
    counts = valid.sum(-1).to(x.dtype).expand(len(layers) + 1, -1)
    if not record:
        return EncoderOutput(core.dense(BertAdapter(layers), x, valid).tokens, counts)
    run = core.planned_masked(BertAdapter(layers), x, None, valid, record="logits")
    return EncoderOutput(run.tokens, counts, attention=run.attention, hidden_states=run.hidden)


def run_online_masked(layers: nn.ModuleList, x: torch.Tensor, valid: torch.Tensor, decide: Decide, *,
                      soft: bool) -> EncoderOutput:
    """Online pruner, dense shapes (:func:`sttabt.executors.core.online_masked`). Hard: a token whose
    mask is 0 stops being a key; soft: the mask multiplies the layer's output and every real token
    stays a key (the reference's soft stage)."""
    run = core.online_masked(BertAdapter(layers), x, decide, valid, soft=soft)
    counts = (run.masks * valid.to(run.masks.dtype)).sum(-1)
    return EncoderOutput(run.tokens, counts, masks=tuple(run.masks[1:]))


def run_online_pruned(layers: nn.ModuleList, x: torch.Tensor, valid: torch.Tensor, decide: Decide) -> EncoderOutput:
    """Online pruner, tokens removed (:func:`sttabt.executors.core.online_pruned`, hard masks only)."""
    run = core.online_pruned(BertAdapter(layers), x, decide, valid)
    return EncoderOutput(run.tokens, run.masks.sum(-1))


def run_planned_masked(layers: nn.ModuleList, x: torch.Tensor, valid: torch.Tensor, plan: torch.Tensor
                       ) -> EncoderOutput:
    """Planned pruner, dense shapes: soft or 0/1 plan (L + 1, B, T)."""
    run = core.planned_masked(BertAdapter(layers), x, plan, valid)
    return EncoderOutput(run.tokens, plan.sum(-1))


@torch.no_grad()
def run_planned_pruned(layers: nn.ModuleList, x: torch.Tensor, plan: torch.Tensor) -> EncoderOutput:
    """Planned pruner, tokens removed (:func:`sttabt.executors.core.planned_pruned`)."""
    run = core.planned_pruned(BertAdapter(layers), x, plan)
    return EncoderOutput(run.tokens, (plan > 0.5).sum(-1).to(x.dtype))
