"""The timm ``VisionTransformer`` host adapter (DeiT, ViT, DeiT-III, LV-ViT): pre-norm blocks.

The block maths are :mod:`sttabt.executors.block`'s (masked, and pruned with fused attention); the
embedding and head are :mod:`sttabt.executors.host`'s. Prefix tokens: ``num_prefix_tokens``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..executors.block import (PROB_EPS, _merge, _mlp, _split_heads, attention_scores, compute_dtype, masked_block,
                               pruned_block)
from .base import HostAdapter


class TimmViTAdapter(HostAdapter):
    def __init__(self, model: nn.Module):
        self.model = model
        self.prefix = int(model.num_prefix_tokens)

    @property
    def layers(self) -> nn.ModuleList:
        return self.model.blocks

    def attention(self, layer, x, keys):
        attn = layer.attn
        q, k, v = _split_heads(attn.qkv(layer.norm1(x)), 3, attn.num_heads)
        q, k = attn.q_norm(q), attn.k_norm(k)
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        if keys is not None:
            logits = logits.masked_fill(~keys[:, None, None, :], torch.finfo(logits.dtype).min)
        probs = logits.softmax(-1)
        if keys is not None:  # exact zeros on the masked keys (rows of no live key stay finite)
            probs = probs * keys[:, None, None, :]
            probs = probs / probs.sum(-1, keepdim=True).clamp_min(PROB_EPS)
        return probs, v

    def finish(self, layer, x, probs, values, m_out, rows=None):
        attn = layer.attn
        context = _merge(attn.attn_drop(probs) @ values)
        x_in = x
        if rows is not None:
            context, x = rows.take(context), rows.take(x)
        out = attn.proj_drop(attn.proj(getattr(attn, "norm", nn.Identity())(context)))
        if m_out is not None:
            out = out * m_out
        x = x + layer.drop_path1(layer.ls1(out))
        x = x + layer.drop_path2(layer.ls2(_mlp(layer.mlp, layer.norm2(x), m_out)))
        return x if rows is None else rows.put(x_in, x)

    def recorded_layer(self, layer, x, m_in, m_out, keys, *, record=None, workspace=None):
        return masked_block(layer, x, m_in, m_out, record=record, workspace=workspace)

    def scores(self, layer, x, record, keys=None, workspace=None):
        return attention_scores(layer, x, record, workspace)

    def workspace(self, x):
        heads = self.model.blocks[0].attn.num_heads
        return x.new_empty(x.shape[0], heads, x.shape[1], x.shape[1], dtype=compute_dtype(x))

    def dense_layer(self, layer, x, key_mask):
        return layer(x) if key_mask is None else layer(x, attn_mask=key_mask)

    def pruned_layer(self, layer, x, n_out, key_mask, rows=None):
        return pruned_block(layer, x, n_out, key_mask, rows)

    def layer_cost(self, layer, *, mlp=True, scores_only=False):
        from timm.models.vision_transformer import ResPostBlock  # post-norm: norm1 acts on outputs

        from ..flops.costs import ATTN_MATMULS, QKV_SPLIT, LayerCost, _linear_cost, _norm_cost_per_element as norm
        from ..flops.costs import _per_token_cost

        if isinstance(layer, ResPostBlock):
            raise NotImplementedError("post-norm blocks (ResPostBlock) are not supported")
        attn = layer.attn
        qkv = getattr(attn, "qkv", None)
        if not isinstance(qkv, nn.Linear):
            raise NotImplementedError(f"attention {type(attn).__name__} without a fused qkv Linear")
        dim, attn_dim, heads = qkv.in_features, qkv.out_features // QKV_SPLIT, attn.num_heads
        head_dim = getattr(attn, "head_dim", attn_dim // heads)
        if heads * head_dim != attn_dim:
            raise ValueError(f"num_heads * head_dim = {heads * head_dim} != qkv width / 3 = {attn_dim}")
        one = dim * attn_dim  # one of q / k / v for one token
        per_in = norm(layer.norm1) * dim + one * (1 if scores_only else 2)  # k (+ v)
        per_in += norm(getattr(attn, "k_norm", nn.Identity())) * attn_dim
        query = one + norm(getattr(attn, "q_norm", nn.Identity())) * attn_dim
        per_out = query
        if not scores_only:
            per_out += _linear_cost(getattr(attn, "gate", None))  # optional gated attention (query side)
            per_out += norm(getattr(attn, "norm", nn.Identity())) * attn_dim + _linear_cost(attn.proj)
            if mlp:
                per_out += norm(layer.norm2) * dim + _per_token_cost(layer.mlp)
        score = heads * head_dim
        return LayerCost(float(per_in), float(per_out), float(score * (1 if scores_only else ATTN_MATMULS)),
                         float(query), float(score))
