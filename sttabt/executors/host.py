"""What the executors need from a host: a timm ``VisionTransformer`` with a class token.

The executors walk the host block by block, so they read its modules directly (ToMe-style: no copy
of timm's model code). ``check_host`` says clearly what is not supported.
"""
from __future__ import annotations

import torch
from torch import nn
from timm.models.vision_transformer import VisionTransformer

_BLOCK_PARTS = ("norm1", "attn", "ls1", "drop_path1", "norm2", "mlp", "ls2", "drop_path2")
_ATTN_PARTS = ("qkv", "q_norm", "k_norm", "proj", "num_heads", "head_dim", "scale")
_MLP_PARTS = ("fc1", "act", "fc2")


def check_host(model: nn.Module) -> None:
    """Raise ``ValueError`` when ``model`` is not a host the executors can run."""
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"sttabt.wrap needs a timm VisionTransformer, got {type(model).__name__}")
    if model.cls_token is None or model.num_prefix_tokens != 1 or model.global_pool != "token":
        raise ValueError(
            "sttabt.wrap needs a host that classifies from one class token (class_token=True, "
            "global_pool='token', no distillation or register tokens); got "
            f"num_prefix_tokens={model.num_prefix_tokens}, global_pool={model.global_pool!r}")
    if getattr(model, "attn_pool", None) is not None:
        raise ValueError("attention-pooling heads are not supported; use global_pool='token'")
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


def head(model: VisionTransformer, x: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
    """Final norm and classifier; ``token_mask`` (B, N) tells a token head which tokens are real."""
    x = model.norm(x)
    if has_token_head(model):
        return model.forward_head(x, token_mask=token_mask)
    return model.forward_head(x)
