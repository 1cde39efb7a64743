"""The STTABT approximation network for text: a thin copy of the host encoder (same depth and heads,
hidden and intermediate widths divided by ``factor``, its own thin embeddings), initialised from the
teacher by linear interpolation of every tensor, distilled per task with
``L_att + 1 * L_hid + L_emb + L_pred`` (hidden weight 1 for text; :func:`sttabt.approx.distillation_loss`).

Planning (:meth:`TextScout.plan_attention`, :func:`planning_attention`) stops at the last layer's
attention scores: no last-layer attention output, FFN or head. It keeps each layer's queries and keys
(:class:`sttabt.pruners.qk.QKAttention`), from which back-tracking computes only the rows it reads,
and in eager CPU inference what the planner reads, made during the pass.
"""
from __future__ import annotations

import torch
from torch import nn

from typing import Sequence

import torch.nn.functional as F

from sttabt.approx import resize_linear
from sttabt.executors import HostOutput, core
from sttabt.hosts.bert import BertAdapter, query_key
from sttabt.pruners.qk import KINDS, QKAttention, attention_with_maps, keeps_maps

from .executors import run_dense
from .host import SEQUENCE_CLASSIFIERS, attention_output, embed, feed_forward, merge_heads, query_key_value

HIDDEN_WEIGHT_TEXT = 1.0  # weight of L_hid for text (0.01 for images)


def classify(host_type: str, modules: nn.Module, sequence: torch.Tensor) -> torch.Tensor:
    """The host's own classification head on (B, n, D) tokens (it reads the first one, CLS)."""
    if host_type == "bert":
        return modules.classifier(modules.dropout(modules.bert.pooler(sequence)))
    return modules.classifier(sequence)


def planning_attention(layers: nn.ModuleList, x: torch.Tensor, valid: torch.Tensor, kind: str
                       ) -> Sequence[torch.Tensor]:
    """Every layer's attention of ``layers`` on embedded tokens ``x`` ((B, T) bool ``valid``), as a
    planner reads it, stopping at the last layer's scores. ``"logits"``: pre-softmax (B, H, T, T)
    logits (the concrete recursion reads every row); ``"probs"``: head-averaged probabilities over
    the valid keys. Both come as a :class:`QKAttention` of each layer's queries and keys, which in
    eager CPU inference (:func:`keeps_maps`) also carries what the planner reads, made during the pass
    (:func:`attention_with_maps`): the probability maps, or the logits' concrete key scores; with
    autograd, ``"logits"`` are the recorded pass's tuple of logits (the scout is trained through them)."""
    if kind not in KINDS:
        raise ValueError(f"attention must be 'logits' or 'probs', got {kind!r}")
    with_maps = keeps_maps(x)
    if kind == "logits" and not with_maps:
        return core.planned_masked(BertAdapter(layers), x, None, valid, record="logits", scores_only=True).attention
    last = len(layers) - 1
    keys = valid.bool()[:, None, None, :]
    scale = layers[0].attention.self.attention_head_size ** -0.5
    queries, keys_seen, maps = [], [], []
    for i, layer in enumerate(layers):
        q, k, v = query_key_value(layer, x) if i < last else (*query_key(layer, x), None)
        queries.append(q)
        keys_seen.append(k)
        made = None
        if i < last:
            drop = layer.attention.self.dropout
            p = drop.p if drop.training else 0.0
            if with_maps and p == 0.0:
                context, made = attention_with_maps(q, k, v, scale, valid, kind)
            else:
                context = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, dropout_p=p)
            x = feed_forward(layer, attention_output(layer, merge_heads(context), x))
        maps.append(made)
    return QKAttention(queries, keys_seen, scale, kind, valid.bool(), **{"maps" if kind == "probs" else "scores": maps})


def thin_config(host_config, factor: int):
    hidden, heads = host_config.hidden_size, host_config.num_attention_heads
    if hidden % factor or (hidden // factor) % heads:
        raise ValueError(f"approx_factor {factor} does not split hidden size {hidden} into {heads} heads; "
                         "choose another factor")
    thin = host_config.__class__(**host_config.to_dict())
    thin.hidden_size = hidden // factor
    thin.intermediate_size = host_config.intermediate_size // factor
    return thin


class TextScout(nn.Module):
    """Thin copy of a BERT-family classifier; ``forward`` returns a recorded
    :class:`sttabt.executors.HostOutput` (attention logits, hidden states, class logits)."""

    def __init__(self, host_type: str, host_config, factor: int):
        super().__init__()
        self.host_type = host_type
        self.net = SEQUENCE_CLASSIFIERS[host_type](thin_config(host_config, factor))
        self.hidden_proj = nn.Linear(host_config.hidden_size // factor, host_config.hidden_size)

    @property
    def base(self) -> nn.Module:
        return getattr(self.net, self.net.base_model_prefix)

    @torch.no_grad()
    def reset_from(self, teacher: nn.Module) -> None:
        """Interpolated init from the teacher (a sequence classifier of the same host type)."""
        source = teacher.state_dict()
        for name, target in self.net.state_dict().items():
            src = source[name]
            target.copy_(resize_linear(src, target.shape) if target.is_floating_point() else src)

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> HostOutput:
        valid = attention_mask.bool()
        x = embed(self.base.embeddings, input_ids, token_type_ids)
        out = run_dense(self.base.encoder.layer, x, valid, record=True)
        return HostOutput(classify(self.host_type, self.net, out.hidden), out.attention, out.hidden_states)

    def plan_attention(self, input_ids, valid: torch.Tensor, token_type_ids=None, *, kind: str
                       ) -> Sequence[torch.Tensor]:
        """What planning reads (:func:`planning_attention`): no last-layer FFN, no head."""
        x = embed(self.base.embeddings, input_ids, token_type_ids)
        return planning_attention(self.base.encoder.layer, x, valid, kind)
