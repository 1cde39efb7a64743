"""The planning scout's forward pass with fused attention: no (B, H, T, T) matrix is kept.

Every block but the last runs as timm's pre-norm ``Block`` does, with
``scaled_dot_product_attention``; what planning needs from each layer is kept, its queries and keys
after the scout's own qkv projection (and q/k norms), thin at ``D / factor``. The last block only
computes its q and k (its attention logits are the last thing planning reads). The result is a
:class:`sttabt.pruners.qk.QKAttention`: planners compute from it only the attention rows they read.
In eager CPU inference (:func:`~sttabt.pruners.qk.keeps_maps`) the blocks run
:func:`~sttabt.pruners.qk.attention_with_maps` instead of fused attention and keep each layer's
(B, T, T) map: head-averaged probabilities, whose rows back-tracking gathers without recomputing
them, or, for ``"logits"``, the concrete key scores the concrete recursion reads; and their linear
layers add bias, GELU and residuals in one kernel (:mod:`sttabt.kernels`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from timm.layers import DropPath, Mlp

from .executors import HostOutput
from .executors.host import embed
from .kernels import linear_add, linear_gelu
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


def _inactive(module: nn.Module) -> bool:
    """True for a module that returns its input: an identity, or dropout / drop-path that is off."""
    if isinstance(module, nn.Identity):
        return True
    if isinstance(module, nn.Dropout):
        return module.p == 0.0 or not module.training
    if isinstance(module, DropPath):
        return module.drop_prob == 0.0 or not module.training
    return False


def _add_branch(x: torch.Tensor, h: torch.Tensor, linear: nn.Linear, *after: nn.Module) -> torch.Tensor:
    """``x + after(linear(h))``: one fused kernel (:func:`sttabt.kernels.linear_add`) when every
    module of ``after`` (dropout, layer scale, drop-path) is inactive."""
    if all(_inactive(m) for m in after):
        return linear_add(h, linear, x)
    out = linear(h)
    for module in after:
        out = module(out)
    return x + out


def _mlp_residual(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x + drop_path2(ls2(mlp(norm2(x))))``; timm's ``Mlp`` with exact GELU runs its first linear
    layer and the GELU as one kernel (:func:`sttabt.kernels.linear_gelu`)."""
    mlp = block.mlp
    plain = (isinstance(mlp, Mlp) and isinstance(mlp.act, nn.GELU) and mlp.act.approximate == "none"
             and _inactive(mlp.drop1) and _inactive(mlp.norm))
    if not plain:
        return x + block.drop_path2(block.ls2(mlp(block.norm2(x))))
    return _add_branch(x, linear_gelu(block.norm2(x), mlp.fc1), mlp.fc2, mlp.drop2, block.ls2, block.drop_path2)


def _fused_block(block: nn.Module, x: torch.Tensor, with_map: str | None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """timm's pre-norm block on (B, T, D) tokens; returns (x, q, k, map). Fused attention, or
    ``with_map`` (an attention kind; and no attention dropout) :func:`attention_with_maps`, whose map
    (head-averaged probabilities, or concrete key scores of the logits) is returned; otherwise the
    map is ``None``. The output projection and the MLP add their residuals (and the MLP its GELU)
    inside the linear kernels where :mod:`sttabt.kernels` can."""
    attn = block.attn
    q, k, v = _split(attn.qkv(block.norm1(x)), 3, attn.num_heads)
    q, k = attn.q_norm(q), attn.k_norm(k)
    drop = attn.attn_drop.p if attn.training else 0.0
    if with_map and drop == 0.0:
        context, probs = attention_with_maps(q, k, v, attn.scale, kind=with_map)
    else:
        context, probs = F.scaled_dot_product_attention(q, k, v, dropout_p=drop, scale=attn.scale), None
    b, _, n, _ = context.shape
    context = getattr(attn, "norm", nn.Identity())(context.transpose(1, 2).reshape(b, n, -1))
    x = _add_branch(x, context, attn.proj, attn.proj_drop, block.ls1, block.drop_path1)
    return _mlp_residual(block, x), q, k, probs


def scout_queries_keys(net: nn.Module, images: torch.Tensor, attention: str) -> HostOutput:
    """Run the thin ``net`` up to its last layer's q and k. ``attention`` (``"logits"`` or ``"probs"``)
    is the form the returned :class:`QKAttention` gives; ``hidden``: the embedding output and every
    layer's output but the last (the last layer's input is the last entry)."""
    x = embed(net, images)
    queries, keys, maps, hidden = [], [], [], [x]
    depth = len(net.blocks)
    with_maps = attention if keeps_maps(x) else None
    for layer, block in enumerate(net.blocks):
        if layer == depth - 1:
            (q, k), probs = _query_key(block.attn, block.norm1(x)), None
        else:
            x, q, k, probs = _fused_block(block, x, with_maps)
            hidden.append(x)
        queries.append(q)
        keys.append(k)
        maps.append(probs)
    made = {"maps" if attention == "probs" else "scores": maps}
    return HostOutput(None, QKAttention(queries, keys, net.blocks[0].attn.scale, attention, **made), tuple(hidden))
