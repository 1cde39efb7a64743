"""Dense LV-ViT as a timm ``VisionTransformer``.

LV-ViT is the model of Jiang et al., "All Tokens Matter: Token Labeling for Training Better Vision
Transformers" (NeurIPS 2021). It differs from a DeiT in four ways, all reproduced here so that the
reference checkpoints load key for key:

* a convolutional patch stem (:class:`LVViTStem`): a stride-2 7x7 conv and two 3x3 convs, each followed by
  BatchNorm and ReLU, then a ``patch_size // 2`` patchifying projection;
* ``qkv`` projections without bias;
* residual branches divided by ``skip_lam`` (:class:`ResidualScale` in the blocks' layer-scale slots);
* a token-labelling head ``aux_head`` applied to every patch token; the class scores are
  ``head(cls) + AUX_WEIGHT * max over patch tokens of aux_head(token)``.

:class:`LVViT` subclasses timm's ``VisionTransformer`` and keeps its module layout (``patch_embed``,
``blocks[i].norm1/attn/ls1/...``, ``norm``, ``forward_head``), so code that walks a timm ViT block by block
handles it like a DeiT. Only inference and fine-tuning with ordinary labels are in scope: training with
dense token labels and MixToken is not implemented, and the output rule above is used in train and eval
mode alike. The reference checkpoints are registered as ``lvvit_small.sail_in1k`` /
``lvvit_medium.sail_in1k`` (their release URLs); offline, pass the file with
``pretrained_cfg_overlay=dict(file=...)`` or load it with :func:`load_lvvit_checkpoint`.
"""
from __future__ import annotations

import math
import os
from functools import partial
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import Format, nchw_to, resample_abs_pos_embed, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models.vision_transformer import Block, VisionTransformer

from ..checkpoint import load_strict, read_checkpoint, unwrap
from ..pretrained import check_fetchable

__all__ = [
    "AUX_WEIGHT",
    "LVViT",
    "LVViTBlock",
    "LVViTStem",
    "ResidualScale",
    "checkpoint_filter_fn",
    "load_lvvit_checkpoint",
    "lvvit_small",
    "lvvit_medium",
]

AUX_WEIGHT = 0.5  # weight of the token-labelling head's max in the class scores (reference eval rule)
SKIP_LAM = 2.0  # residual branches are divided by this (LV-ViT-S and -M)
STEM_CHANS = 64  # width of the convolutional stem
STEM_KERNEL, STEM_STRIDE = 7, 2  # first stem conv; the stride is why the projection uses patch_size // 2
LAYER_NORM_EPS = 1e-5  # the reference uses torch's nn.LayerNorm default, not timm's 1e-6

# VisionTransformer options that LV-ViT fixes: a caller may repeat these values, not change them.
_FIXED_ARGS = dict(
    class_token=True, global_pool="token", qkv_bias=False, reg_tokens=0, no_embed_class=False,
    pre_norm=False, init_values=None,
)


class ResidualScale(nn.Module):
    """Multiplies by a constant; sits in a block's ``ls1``/``ls2`` slot, adds no state-dict entries."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def extra_repr(self) -> str:
        return f"scale={self.scale:g}"


class LVViTBlock(Block):
    """timm ``Block`` whose attention and MLP branches are divided by ``skip_lam`` before the residual add."""

    def __init__(self, dim: int, num_heads: int, *, skip_lam: float = SKIP_LAM, init_values=None, **kwargs):
        if init_values:
            raise ValueError("LV-ViT blocks scale residuals by 1/skip_lam; layer scale (init_values) is not supported")
        if skip_lam <= 0:
            raise ValueError(f"skip_lam must be positive, got {skip_lam}")
        super().__init__(dim, num_heads, **kwargs)
        self.skip_lam = float(skip_lam)
        self.ls1 = ResidualScale(1.0 / skip_lam)
        self.ls2 = ResidualScale(1.0 / skip_lam)


class LVViTStem(nn.Module):
    """The "4_2" convolutional patch embedding, used as a timm ``embed_layer``.

    ``conv1`` (7x7, stride 2) -> ``bn1`` -> ReLU -> ``conv2`` (3x3) -> ``bn2`` -> ReLU -> ``conv3`` (3x3) -> ``bn3``
    -> ReLU -> ``proj`` (kernel = stride = ``patch_size // 2``). Exposes the attributes ``VisionTransformer``
    reads from a ``PatchEmbed`` (``img_size``, ``patch_size``, ``grid_size``, ``num_patches``, ``feat_ratio``,
    ``dynamic_feat_size``, ``set_input_size``). Returns ``(B, N, D)`` tokens, or ``(B, H, W, D)`` when timm
    asks for ``output_fmt='NHWC'`` (``dynamic_img_size=True``).
    """

    def __init__(
            self,
            img_size: Union[int, Tuple[int, int]] = 224,
            patch_size: Union[int, Tuple[int, int]] = 16,
            in_chans: int = 3,
            embed_dim: int = 768,
            bias: bool = True,
            stem_chans: int = STEM_CHANS,
            strict_img_size: bool = True,
            output_fmt: Optional[str] = None,
            dynamic_img_pad: bool = False,
            norm_layer=None,
            device=None,
            dtype=None,
    ) -> None:
        super().__init__()
        if dynamic_img_pad or norm_layer is not None:
            raise ValueError("LVViTStem supports neither dynamic_img_pad nor an embedding norm_layer")
        dd = {"device": device, "dtype": dtype}
        self.patch_size = to_2tuple(patch_size)
        if any(p % STEM_STRIDE for p in self.patch_size):
            raise ValueError(
                f"LV-ViT needs an even patch_size (its stem halves the image before the patch projection), "
                f"got {patch_size}")
        self.img_size, self.grid_size, self.num_patches = self._grid(img_size)
        self.embed_dim = embed_dim
        self.stem_chans = stem_chans
        self.strict_img_size = strict_img_size
        self.dynamic_img_pad = False
        self.output_fmt = Format(output_fmt) if output_fmt else None

        conv3x3 = partial(nn.Conv2d, stem_chans, stem_chans, kernel_size=3, stride=1, padding=1, bias=False, **dd)
        self.conv1 = nn.Conv2d(in_chans, stem_chans, kernel_size=STEM_KERNEL, stride=STEM_STRIDE,
                               padding=STEM_KERNEL // 2, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(stem_chans, **dd)
        self.act1 = nn.ReLU()
        self.conv2 = conv3x3()
        self.bn2 = nn.BatchNorm2d(stem_chans, **dd)
        self.act2 = nn.ReLU()
        self.conv3 = conv3x3()
        self.bn3 = nn.BatchNorm2d(stem_chans, **dd)
        self.act3 = nn.ReLU()
        proj_kernel = tuple(p // STEM_STRIDE for p in self.patch_size)
        self.proj = nn.Conv2d(stem_chans, embed_dim, kernel_size=proj_kernel, stride=proj_kernel, bias=bias, **dd)

    def _grid(self, img_size) -> Tuple[Tuple[int, int], Tuple[int, int], int]:
        img_size = to_2tuple(img_size)
        if any(s % p for s, p in zip(img_size, self.patch_size)):
            raise ValueError(f"LV-ViT needs img_size {img_size} divisible by patch_size {self.patch_size}")
        grid = (img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1])
        return img_size, grid, grid[0] * grid[1]

    def set_input_size(self, img_size=None, patch_size=None) -> None:
        """Change the expected image size (called by ``VisionTransformer.set_input_size``)."""
        if patch_size is not None and to_2tuple(patch_size) != self.patch_size:
            raise ValueError("LVViTStem cannot change its patch_size after construction")
        if img_size is not None:
            self.img_size, self.grid_size, self.num_patches = self._grid(img_size)

    def feat_ratio(self, as_scalar: bool = True) -> Union[int, Tuple[int, int]]:
        return max(self.patch_size) if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: Tuple[int, int]) -> Tuple[int, int]:
        return img_size[0] // self.patch_size[0], img_size[1] // self.patch_size[1]

    @torch.jit.unused
    def _check_size(self, height: int, width: int) -> None:
        if self.strict_img_size and (height, width) != self.img_size:
            h, w = self.img_size
            raise ValueError(
                f"This LV-ViT expects {h}x{w} images but got {height}x{width}. Its position embedding covers a "
                f"{self.grid_size[0]}x{self.grid_size[1]} patch grid; for another resolution create the model "
                f"with img_size=, e.g. timm.create_model('lvvit_small', img_size=({height}, {width})), and load "
                f"weights with load_lvvit_checkpoint, which resamples pos_embed.")
        if any(s % p for s, p in zip((height, width), self.patch_size)):
            raise ValueError(f"Image size {height}x{width} is not divisible by the patch size {self.patch_size}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # scripted and FX-traced graphs skip the (Python) size check
            if not is_fx_symbolic_tracing():
                self._check_size(x.shape[-2], x.shape[-1])
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.conv2(x)))
        x = self.act3(self.bn3(self.conv3(x)))
        x = self.proj(x)
        if self.output_fmt is None:
            return x.flatten(2).transpose(1, 2)  # (B, N, D)
        return nchw_to(x, self.output_fmt)


class LVViT(VisionTransformer):
    """LV-ViT with the token-labelling head, laid out like timm's ``VisionTransformer``.

    Args:
        skip_lam: residual branches are divided by this.
        stem_chans: width of the convolutional stem.
        **kwargs: ``VisionTransformer`` arguments (``img_size``, ``patch_size``, ``embed_dim``, ``depth``,
            ``num_heads``, ``mlp_ratio``, ``num_classes``, drop rates, ...). The options LV-ViT fixes
            (class token, token pooling, no qkv bias, no layer scale, ...) may not be changed.
    """

    def __init__(self, skip_lam: float = SKIP_LAM, stem_chans: int = STEM_CHANS, **kwargs: Any) -> None:
        for name, value in _FIXED_ARGS.items():
            if name in kwargs and kwargs[name] != value:
                raise ValueError(f"LV-ViT fixes {name}={value!r}, got {kwargs[name]!r}")
        for name in ("embed_layer", "block_fn"):
            if name in kwargs:
                raise ValueError(f"LV-ViT sets {name} itself; use stem_chans / skip_lam instead")
        kwargs = {**kwargs, **_FIXED_ARGS}
        kwargs.setdefault("norm_layer", partial(nn.LayerNorm, eps=LAYER_NORM_EPS))
        super().__init__(
            embed_layer=partial(LVViTStem, stem_chans=stem_chans),
            block_fn=partial(LVViTBlock, skip_lam=skip_lam),
            **kwargs,
        )
        self.skip_lam = float(skip_lam)
        self.aux_weight = AUX_WEIGHT
        self.aux_head = self._make_aux_head(self.num_classes)

    def _make_aux_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        ref = self.cls_token
        head = nn.Linear(self.embed_dim, num_classes, device=ref.device, dtype=ref.dtype)
        trunc_normal_(head.weight, std=0.02)
        nn.init.zeros_(head.bias)
        return head

    def thin_copy_kwargs(self, factor: int) -> Dict[str, Any]:
        """Extra constructor arguments of a ``factor``-times thinner copy (the STTABT scout)."""
        return {"skip_lam": self.skip_lam, "stem_chans": max(1, self.patch_embed.stem_chans // factor)}

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace ``head`` and ``aux_head``. Pooling stays ``'token'``; ``''`` (no pooling) is allowed only
        without classes, as timm's ``prune_intermediate_layers`` asks."""
        if global_pool not in (None, "token") and not (global_pool == "" and num_classes <= 0):
            raise ValueError(f"LV-ViT classifies from the class token; global_pool={global_pool!r} is unsupported")
        super().reset_classifier(num_classes, global_pool)
        self.aux_head = self._make_aux_head(num_classes)
        self.aux_head.train(self.training)

    def forward_head(
            self,
            x: torch.Tensor,
            pre_logits: bool = False,
            token_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Class scores ``head(x[:, 0]) + AUX_WEIGHT * aux_head(x[:, 1:]).max(dim=1)`` from normed tokens.

        Args:
            x: ``(B, N, D)`` output of ``forward_features`` (index 0 is the class token).
            pre_logits: return the class-token feature ``(B, D)``, as timm does.
            token_mask: optional ``(B, N)`` bool or float tensor over all tokens (index 0 = CLS); tokens
                where it is 0 are left out of the ``aux_head`` max. The pruning wrapper relies on this
                argument to keep padded / dropped tokens out of the max. A sample without any real patch
                token gets no aux term. ``None`` counts every patch token.
        """
        cls = self.head_drop(self.fc_norm(self.pool(x)))
        if pre_logits:
            return cls
        logits = self.head(cls)
        if self.num_classes <= 0:
            return logits  # heads are identities: return the features as timm does
        aux = self.aux_head(self.head_drop(x[:, self.num_prefix_tokens:]))
        if token_mask is None:
            return logits + self.aux_weight * aux.amax(dim=1)
        if token_mask.shape[0] != x.shape[0] or token_mask.shape[1] != x.shape[1] or token_mask.dim() != 2:
            raise ValueError("token_mask must have shape (batch, tokens incl. CLS), the first two dimensions of x")
        real = (token_mask[:, self.num_prefix_tokens:] != 0).to(x.device)
        aux_max = aux.masked_fill(~real.unsqueeze(-1), float("-inf")).amax(dim=1)
        aux_max = torch.where(real.any(dim=1, keepdim=True), aux_max, torch.zeros_like(aux_max))
        return logits + self.aux_weight * aux_max


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: LVViT) -> Dict[str, Any]:
    """Adapt a reference LV-ViT checkpoint to ``model``.

    Accepts a raw state dict or one stored under ``'model'``, ``'state_dict'`` or ``'state_dict_ema'`` (first
    found wins), strips a leading ``'module.'`` (DataParallel / DDP), resamples ``pos_embed`` to the model's
    patch grid when the token count differs, and fills BatchNorm ``num_batches_tracked`` counters that
    old checkpoints lack. Anything else is passed through for the strict load to judge.
    """
    out = dict(unwrap(state_dict))

    pos, target = out.get("pos_embed"), model.pos_embed
    if isinstance(pos, torch.Tensor) and pos.ndim == 3 and pos.shape[-1] == target.shape[-1] \
            and pos.shape[1] != target.shape[1]:
        side = math.isqrt(pos.shape[1] - model.num_prefix_tokens)
        if side * side == pos.shape[1] - model.num_prefix_tokens:  # square grid, as the reference trains
            out["pos_embed"] = resample_abs_pos_embed(
                pos, new_size=model.patch_embed.grid_size, old_size=(side, side),
                num_prefix_tokens=model.num_prefix_tokens)

    for name, buf in model.named_buffers():
        if name.endswith("num_batches_tracked") and name not in out \
                and name.replace("num_batches_tracked", "running_mean") in out:
            out[name] = torch.zeros_like(buf)
    return out


def load_lvvit_checkpoint(
        model: LVViT,
        checkpoint: Union[str, os.PathLike, Mapping[str, Any]],
        weights_only: bool = True,
) -> LVViT:
    """Load a reference LV-ViT checkpoint (a path or an already loaded dict) into ``model``, strictly.

    The checkpoint goes through :func:`checkpoint_filter_fn`. Any missing key, unexpected key or shape
    mismatch raises a ``ValueError`` naming them; nothing is loaded partially. ``weights_only`` is passed
    to ``torch.load``; set it to False only for a trusted file that pickles more than tensors.
    """
    if not isinstance(checkpoint, Mapping):
        checkpoint = read_checkpoint(checkpoint, weights_only=weights_only)
    return load_strict(model, checkpoint_filter_fn(checkpoint, model), "LV-ViT")


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None, "fixed_input_size": True,
        "crop_pct": 0.9, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.conv1", "classifier": ("head", "aux_head"), "paper_ids": "arXiv:2104.10858", **kwargs,
    }


# the reference release (Jiang et al.'s TokenLabeling repository): file names as published
REFERENCE_RELEASE = "https://github.com/zihangJiang/TokenLabeling/releases/download/1.0/"

default_cfgs = generate_default_cfgs({
    "lvvit_small.sail_in1k": _cfg(url=REFERENCE_RELEASE + "lvvit_s-26M-224-83.3.pth.tar", crop_pct=0.9),
    "lvvit_medium.sail_in1k": _cfg(url=REFERENCE_RELEASE + "lvvit_m-56M-224-84.0.pth.tar", crop_pct=1.0),
})


def _create_lvvit(variant: str, pretrained: bool = False, **kwargs: Any) -> LVViT:
    """``pretrained=True`` reads the reference checkpoint from its release URL, or offline from
    ``pretrained_cfg_overlay=dict(file='lvvit_s-26M-224-83.3.pth.tar')``, through :func:`checkpoint_filter_fn`."""
    out_indices = kwargs.pop("out_indices", 3)
    if pretrained:
        check_fetchable(variant, resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                                        pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay")))
    return build_model_with_cfg(
        LVViT, variant, pretrained=pretrained, pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs)


@register_model
def lvvit_small(pretrained: bool = False, **kwargs: Any) -> LVViT:
    """LV-ViT-S: 16 blocks of width 384, 26.2M parameters at 224x224."""
    model_args = dict(patch_size=16, embed_dim=384, depth=16, num_heads=6, mlp_ratio=3.0, skip_lam=2.0)
    return _create_lvvit("lvvit_small", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def lvvit_medium(pretrained: bool = False, **kwargs: Any) -> LVViT:
    """LV-ViT-M: 20 blocks of width 512, 55.8M parameters at 224x224."""
    model_args = dict(patch_size=16, embed_dim=512, depth=20, num_heads=8, mlp_ratio=3.0, skip_lam=2.0)
    return _create_lvvit("lvvit_medium", pretrained=pretrained, **dict(model_args, **kwargs))
