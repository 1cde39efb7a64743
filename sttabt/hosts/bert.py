"""The BERT-family host adapter: a BERT, RoBERTa or I-BERT (float mode) encoder of transformers.

The executors walk the host layer by layer and read its modules directly (no copy of transformers'
code): ``attention.self.{query,key,value}``, ``attention.output.{dense,dropout,LayerNorm}``,
``intermediate.{dense,intermediate_act_fn}``, ``output.{dense,dropout,LayerNorm}``. These are
*post-norm* layers: ``a = LN(x + O(attention))``, ``y = LN(a + FFN(a))``. I-BERT's modules return
``(tensor, scaling_factor)`` pairs; in float mode the factor is ``None`` and :func:`_t` drops it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..executors.block import _recorded
from ..pruners.qk import key_bias
from .base import HostAdapter
from transformers import (BertForSequenceClassification, IBertForSequenceClassification,
                          RobertaForSequenceClassification)

# The host's sequence-classification class; its children (e.g. ``bert`` and ``classifier``) are
# adopted as they are, so state-dict keys are the host's own.
SEQUENCE_CLASSIFIERS = {
    "bert": BertForSequenceClassification,
    "roberta": RobertaForSequenceClassification,
    "ibert": IBertForSequenceClassification,
}
PREFIXES = {"bert": "bert", "roberta": "roberta", "ibert": "ibert"}
_LAYER_PARTS = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm")


def _t(out):
    """I-BERT modules return ``(tensor, scaling_factor)``; BERT and RoBERTa return the tensor."""
    return out[0] if isinstance(out, tuple) else out


def check_layers(layers: nn.ModuleList) -> None:
    for i, layer in enumerate(layers):
        for part in _LAYER_PARTS:
            module = layer
            for name in part.split("."):
                module = getattr(module, name, None)
            if module is None:
                raise ValueError(f"layer {i} ({type(layer).__name__}) lacks {part}: not a BERT-family layer")


def embed(embeddings: nn.Module, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None) -> torch.Tensor:
    """Word, position and token-type embeddings, LayerNorm and dropout: (B, T, D)."""
    return _t(embeddings(input_ids=input_ids, token_type_ids=token_type_ids))


def num_heads(layer: nn.Module) -> int:
    return layer.attention.self.num_attention_heads


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, _, n, _ = x.shape
    return x.transpose(1, 2).reshape(b, n, -1)


def query_key_value(layer: nn.Module, x: torch.Tensor, n_out: int | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, H, n, d) queries (of the first ``n_out`` tokens, default all), keys and values."""
    attn = layer.attention.self
    heads = attn.num_attention_heads
    q_in = x if n_out is None else x[:, :n_out]
    return (_heads(_t(attn.query(q_in)), heads), _heads(_t(attn.key(x)), heads), _heads(_t(attn.value(x)), heads))


def query_key(layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, H, n, d) queries and keys only: what attention scores need (a planning pass's last layer)."""
    attn = layer.attention.self
    heads = attn.num_attention_heads
    return _heads(_t(attn.query(x)), heads), _heads(_t(attn.key(x)), heads)


def attention_logits(layer: nn.Module, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return (q * layer.attention.self.attention_head_size ** -0.5) @ k.transpose(-2, -1)


def probs_dropout(layer: nn.Module, probs: torch.Tensor) -> torch.Tensor:
    return layer.attention.self.dropout(probs)


def attention_output(layer: nn.Module, context: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``LN(x + dropout(dense(context)))`` with ``context`` (B, n, D) already merged over heads."""
    out = layer.attention.output
    return _t(out.LayerNorm(out.dropout(_t(out.dense(context))) + x))


def feed_forward(layer: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """``LN(a + dropout(fc2(act(fc1(a)))))``."""
    hidden = _t(layer.intermediate.intermediate_act_fn(_t(layer.intermediate.dense(a))))
    out = layer.output
    return _t(out.LayerNorm(out.dropout(_t(out.dense(hidden))) + a))


PROB_EPS = 1e-12  # guards the renormalisation of attention rows under a plan


class BertAdapter(HostAdapter):
    """The encoder layers of a BERT-family host (post-norm); the class token is token 0."""

    prefix = 1

    def __init__(self, layers: nn.ModuleList):
        check_layers(layers)
        self._layers = layers

    @property
    def layers(self) -> nn.ModuleList:
        return self._layers

    def attention(self, layer, x, keys):
        q, k, v = query_key_value(layer, x)
        logits = attention_logits(layer, q, k)
        if keys is not None:
            logits = logits + key_bias(keys, logits.dtype)
        return logits.softmax(-1), v

    def finish(self, layer, x, probs, values, m_out, rows=None):
        context = merge_heads(probs_dropout(layer, probs) @ values)
        if rows is not None:  # (1, R, D): I-BERT's modules want three dimensions
            return rows.put(x, self._finish(layer, rows.take(x)[None], rows.take(context)[None], None)[0])
        return self._finish(layer, x, context, m_out)

    @staticmethod
    def _finish(layer, x, context, m_out):
        y = feed_forward(layer, attention_output(layer, context, x))
        return y if m_out is None else x + m_out * (y - x)  # post-norm: a dropped token passes through

    def recorded_layer(self, layer, x, m_in, m_out, keys, *, record=None, workspace=None):
        q, k, v = query_key_value(layer, x)
        logits = attention_logits(layer, q, k)
        probs = (logits if keys is None else logits + key_bias(keys, logits.dtype)).softmax(-1)
        if m_in is not None:
            probs = probs * m_in[:, None, None, :]
            probs = probs / probs.sum(-1, keepdim=True).clamp_min(PROB_EPS)
            v = v * m_in[:, None, :, None]
        y = self.finish(layer, x, probs, v, None if m_out is None else m_out.unsqueeze(-1))
        return y, _recorded(record, logits, probs)

    def scores(self, layer, x, record, keys=None, workspace=None):
        q, k = query_key(layer, x)  # no values: nothing reads them
        logits = attention_logits(layer, q, k)
        if record == "logits":
            return logits
        return (logits if keys is None else logits + key_bias(keys, logits.dtype)).softmax(-1).mean(1)

    def dense_layer(self, layer, x, key_mask):
        q, k, v = query_key_value(layer, x)
        drop = layer.attention.self.dropout
        p = drop.p if drop.training else 0.0
        context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=p)
        return feed_forward(layer, attention_output(layer, merge_heads(context), x))

    def pruned_layer(self, layer, x, n_out, key_mask, rows=None):
        if rows is None:
            q, k, v = query_key_value(layer, x, n_out)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
            return feed_forward(layer, attention_output(layer, merge_heads(context), x[:, :n_out]))
        attn, x_out = layer.attention.self, x[:, :n_out]
        x_real = rows.take(x_out)[None]  # (1, R, D): I-BERT's modules want three dimensions
        q = _heads(rows.scatter(_t(attn.query(x_real))[0]), attn.num_attention_heads)
        k, v = (_heads(_t(m(x)), attn.num_attention_heads) for m in (attn.key, attn.value))
        context = rows.take(merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)))[None]
        return rows.put(x_out, feed_forward(layer, attention_output(layer, context, x_real))[0])

    def layer_cost(self, layer, *, mlp=True, scores_only=False):
        from ..flops.costs import ATTN_MATMULS, LayerCost

        attn, out = layer.attention.self, layer.attention.output
        q, k, v = (_weight_cost(m) for m in (attn.query, attn.key, attn.value))
        width = attn.all_head_size  # heads x head size: one (query, key) score costs that many MACs
        if scores_only:  # a planning pass's last layer: Q and K of every token, and the scores
            return LayerCost(float(k), float(q), float(width), float(q), float(width))
        per_out = q + _weight_cost(out.dense) + _norm_cost(out.LayerNorm)
        if mlp:
            per_out += (_weight_cost(layer.intermediate.dense) + _weight_cost(layer.output.dense)
                        + _norm_cost(layer.output.LayerNorm))
        return LayerCost(float(k + v), float(per_out), float(ATTN_MATMULS * width), float(q), float(width))


def _weight_cost(linear: nn.Module) -> int:
    """in x out of a Linear (or I-BERT's QuantLinear, float mode): one MAC per weight and token."""
    return linear.weight.shape[0] * linear.weight.shape[1]


def _norm_cost(norm: nn.Module) -> int:
    """FLOPs of a post-norm LayerNorm on one token: fvcore's rule for ``nn.LayerNorm``; I-BERT's
    ``IntLayerNorm`` (float mode) is counted as the affine LayerNorm it computes."""
    from ..flops.costs import NORM_FLOPS_AFFINE, _norm_cost_per_element

    per_element = _norm_cost_per_element(norm) if isinstance(norm, nn.LayerNorm) else NORM_FLOPS_AFFINE
    return per_element * norm.weight.shape[0]
