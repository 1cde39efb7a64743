"""What the executors need from a host: a timm ``VisionTransformer`` whose head reads its prefix
tokens (``global_pool='token'``: class token, DeiT's distillation token) or averages its patch tokens
(``global_pool='avg'``); register tokens are welcome. Prefix tokens are never dropped.

The executors walk the host block by block, so they read its modules directly (ToMe-style: no copy
of timm's model code). ``check_host`` says clearly what is not supported.
"""
from __future__ import annotations

import torch
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from ..pruners.layout import POOLS

_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
_ATTN_PARTS = ("qkv", "q_norm", "k_norm", "proj", "num_heads", "head_dim", "scale")
_MLP_PARTS = ("fc1", "act", "fc2")


def check_host(model: nn.Module) -> None:
    """Raise ``ValueError`` when ``model`` is not a host the executors can run."""
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"sttabt.wrap needs a timm VisionTransformer, got {type(model).__name__}")
    if model.global_pool not in POOLS:
        raise ValueError(f"sttabt.wrap needs a host with global_pool='token' or 'avg', got {model.global_pool!r}")
    if model.global_pool == "token" and model.cls_token is None:
        raise ValueError("global_pool='token' needs a class token (class_token=True); or use global_pool='avg'")
    if getattr(model, "attn_pool", None) is not None:
        raise ValueError("attention-pooling heads are not supported; use global_pool='token' or 'avg'")
    if getattr(model, "pool_include_prefix", False):
        raise ValueError("heads that pool the prefix tokens too (pool_include_prefix=True) are not supported")
    for i, block in enumerate(model.blocks):
        missing = [p for p in _BLOCK_PARTS if not hasattr(block, p)]
        missing += [f"attn.{p}" for p in _ATTN_PARTS if not hasattr(block.attn, p)]
        missing += [f"mlp.{p}" for p in _MLP_PARTS if not hasattr(block.mlp, p)]
        if missing:
            raise ValueError(f"block {i} ({type(block).__name__}) is not a pre-norm timm Block; "
                             f"it lacks {', '.join(missing)}")
        if getattr(block.attn, "gate", None) is not None:
            raise ValueError(f"block {i} uses gated attention, which is not supported")


def has_token_head(model: nn.Module) -> bool:
    """True for hosts whose head also reads the patch tokens (LV-ViT's token-labelling aux head)."""
    return getattr(model, "aux_head", None) is not None


def embed(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """Patch embedding, class token and position embedding: (B, T, D) tokens, CLS first."""
    height, width = model.patch_embed.img_size
    if images.ndim != 4 or tuple(images.shape[-2:]) != (height, width):
        raise ValueError(
            f"expected images of shape (B, C, {height}, {width}), got {tuple(images.shape)}; resize the "
            f"images or create the model with img_size={tuple(images.shape[-2:])}")
    x = model.patch_embed(images)
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    return model.norm_pre(x)


def average_kept(model: VisionTransformer, x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """(B, D) mean of the patch tokens of ``x`` (B, N, D) that ``token_mask`` (B, N; bool, 0/1 or soft
    weights) keeps; all of them without a mask: timm's ``global_pool='avg'``."""
    patches = x[:, model.num_prefix_tokens:]
    if token_mask is None:
        return patches.mean(1)
    weight = token_mask[:, model.num_prefix_tokens:].to(patches.dtype).unsqueeze(-1)
    return (patches * weight).sum(1) / weight.sum(1).clamp_min(torch.finfo(patches.dtype).tiny)


def forward_head(model: VisionTransformer, x: torch.Tensor, token_mask: torch.Tensor | None = None,
                 pre_logits: bool = False) -> torch.Tensor:
    """The host's head on normed tokens; ``token_mask`` (B, N) says which tokens are kept (an ``avg``
    head averages those, LV-ViT's token head reads those)."""
    if has_token_head(model):
        return model.forward_head(x, pre_logits=pre_logits, token_mask=token_mask)
    if model.global_pool == "avg":
        x = model.head_drop(model.fc_norm(average_kept(model, x, token_mask)))
        return x if pre_logits else model.head(x)
    return model.forward_head(x, pre_logits=pre_logits)


def head(model: VisionTransformer, x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """Final norm and classifier; ``token_mask`` (B, N) tells the head which tokens are kept."""
    return forward_head(model, model.norm(x), token_mask)
