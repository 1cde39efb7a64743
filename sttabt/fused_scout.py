"""The planning scout's forward pass with fused attention: no (B, H, T, T) matrix is kept.

Every block but the last runs as timm's pre-norm ``Block`` does, with
``scaled_dot_product_attention``; what planning needs from each layer is kept, its queries and keys
after the scout's own qkv projection (and q/k norms), thin at ``D / factor``. The last block only
computes its q and k (its attention logits are the last thing planning reads). The result is a
:class:`sttabt.pruners.qk.QKAttention`: planners compute from it only the attention rows they read.
For head-averaged probabilities in eager CPU inference (:func:`~sttabt.pruners.qk.keeps_maps`), the
blocks run :func:`~sttabt.pruners.qk.attention_with_maps` instead of fused attention and keep each
layer's (B, T, T) map, so planning reads rows without recomputing them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .executors import HostOutput
from .executors.host import embed
from .pruners.qk import QKAttention, attention_with_maps, keeps_maps


def _split(x: torch.Tensor, parts: int, num_heads: int) -> tuple[torch.Tensor, ...]:
    """(B, N, parts * H * d) -> ``parts`` contiguous (B, H, N, d) tensors."""
    b, n, _ = x.shape
    return x.view(b, n, parts, num_heads, -1).permute(2, 0, 3, 1, 4).contiguous().unbind(0)


def _query_key(attn: nn.Module, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k of ``attn`` on normed tokens ``h``, without computing the values."""
    dim = attn.num_heads * attn.head_dim
    bias = None if attn.qkv.bias is None else attn.qkv.bias[: 2 * dim]
    q, k = _split(F.linear(h, attn.qkv.weight[: 2 * dim], bias), 2, attn.num_heads)
    return attn.q_norm(q), attn.k_norm(k)


def _fused_block(block: nn.Module, x: torch.Tensor, with_map: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """timm's pre-norm block on (B, T, D) tokens; returns (x, q, k, map). Fused attention, or
    ``with_map`` (and no attention dropout) :func:`attention_with_maps`, whose map (the head-averaged
    probabilities) is returned; otherwise the map is ``None``."""
    attn = block.attn
    q, k, v = _split(attn.qkv(block.norm1(x)), 3, attn.num_heads)
    q, k = attn.q_norm(q), attn.k_norm(k)
    drop = attn.attn_drop.p if attn.training else 0.0
    if with_map and drop == 0.0:
        context, probs = attention_with_maps(q, k, v, attn.scale)
    else:
        context, probs = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=attn.scale), None
    b, _, n, _ = context.shape
    out = attn.proj(getattr(attn, "norm", nn.Identity())(context.transpose(1, 2).reshape(b, n, -1)))
    x = x + block.drop_path1(block.ls1(attn.proj_drop(out)))
    x = x + block.drop_path2(block.ls2(block.mlp(block.norm2(x))))
    return x, q, k, probs


def scout_queries_keys(net: nn.Module, images: torch.Tensor, attention: str) -> HostOutput:
    """Run the thin ``net`` up to its last layer's q and k. ``attention`` (``"logits"`` or ``"probs"``)
    is the form the returned :class:`QKAttention` gives; ``hidden``: the embedding output and every
    layer's output but the last (the last layer's input is the last entry)."""
    x = embed(net, images)
    queries, keys, maps, hidden = [], [], [], [x]
    depth = len(net.blocks)
    with_maps = attention == "probs" and keeps_maps(x)
    for layer, block in enumerate(net.blocks):
        if layer == depth - 1:
            (q, k), probs = _query_key(block.attn, block.norm1(x)), None
        else:
            x, q, k, probs = _fused_block(block, x, with_maps)
            hidden.append(x)
        queries.append(q)
        keys.append(k)
        maps.append(probs)
    return HostOutput(None, QKAttention(queries, keys, net.blocks[0].attn.scale, attention, maps=maps), tuple(hidden))
