"""Per-module FLOPs costs (fvcore's conventions) and the report type."""
from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

GIGA = 1e9
# fvcore's per-element costs of normalisation layers (see fvcore/nn/jit_handles.py).
NORM_FLOPS_AFFINE = 5  # layer/group/instance norm (and training-mode batch norm) with weight
NORM_FLOPS_PLAIN = 4  # same, without an affine weight
BN_EVAL_FLOPS_AFFINE = 2  # inference batch norm: one scale + one shift per element
BN_EVAL_FLOPS_PLAIN = 1
QKV_SPLIT = 3  # a fused qkv projection holds q, k and v rows, in that order
ATTN_MATMULS = 2  # scores (q k^T) and weighted sum (attn v)
CONSISTENCY_TOL = 1e-6  # tolerance when checking n_out[l] == n_in[l + 1] on float (mean) counts


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlopsReport:
    """FLOPs of one forward pass of one image (multiply-add = 1 FLOP), split by stage."""

    embed: float  # patch embedding / convolutional stem (+ norm_pre)
    blocks: tuple[float, ...]  # one entry per transformer layer
    head: float  # final norm + classifier head (+ distillation / aux token-labelling head)
    total: float  # embed + sum(blocks) + head

    @classmethod
    def build(cls, embed: float, blocks: Sequence[float], head: float) -> "FlopsReport":
        blocks = tuple(float(b) for b in blocks)
        return cls(float(embed), blocks, float(head), float(embed) + math.fsum(blocks) + float(head))

    @property
    def gflops(self) -> float:
        return self.total / GIGA

    def to_dict(self) -> dict[str, Any]:
        return {
            "embed": self.embed,
            "blocks": list(self.blocks),
            "head": self.head,
            "total": self.total,
            "gflops": self.gflops,
        }


@dataclass(frozen=True)
class LayerCost:
    """FLOPs of one layer as a function of its token counts (a host adapter's ``layer_cost``).

    ``per_in``: per key/value token; ``per_out``: per query (= output) token; ``per_pair``: per
    (query, key) pair. An online pruner decides from every live query's attention, so a layer also
    computes ``query`` (its projection) and ``score_pair`` per key for each token it then drops.
    """

    per_in: float
    per_out: float
    per_pair: float
    query: float = 0.0
    score_pair: float = 0.0

    def flops(self, n_in: torch.Tensor, n_out: torch.Tensor, *, online: bool = False,
              rows_out: torch.Tensor | None = None) -> torch.Tensor:
        """FLOPs per sample, elementwise over (float64) counts. ``rows_out``: the output rows the
        per-token work runs on, when it differs from the ``n_out`` queries the attention scores (a
        pruned layer that packs the real rows of a padded batch)."""
        rows = n_out if rows_out is None else rows_out
        total = self.per_in * n_in + self.per_out * rows + self.per_pair * n_in * n_out
        if online:
            total = total + (n_in - n_out) * (self.query + self.score_pair * n_in)
        return total


# --------------------------------------------------------------------------------------------------
# per-module costs
# --------------------------------------------------------------------------------------------------
_BatchNorm = nn.modules.batchnorm._BatchNorm
_ConvNd = nn.modules.conv._ConvNd


def _norm_cost_per_element(m: nn.Module) -> int:
    """FLOPs per normalised element for a norm module (0 for Identity); raises for unknown types."""
    if isinstance(m, nn.Identity):
        return 0
    if isinstance(m, _BatchNorm):  # counted in inference mode, like fvcore on an eval() model
        return BN_EVAL_FLOPS_AFFINE if m.weight is not None else BN_EVAL_FLOPS_PLAIN
    if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
        return NORM_FLOPS_AFFINE if getattr(m, "weight", None) is not None else NORM_FLOPS_PLAIN
    raise NotImplementedError(
        f"FLOPs of norm layer {type(m).__name__} are not defined (fvcore counts layer/group/batch norm only)"
    )


def _per_token_cost(module: nn.Module) -> int:
    """FLOPs per token of a module applied token-wise (an MLP): Linear layers and norms in it."""
    if isinstance(module, nn.Identity):
        return 0
    total = 0
    for m in module.modules():
        if any(True for _ in m.children()):
            continue  # containers: their leaves are visited
        if isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
        elif isinstance(m, nn.LayerNorm):
            total += math.prod(m.normalized_shape) * _norm_cost_per_element(m)
        elif any(True for _ in m.parameters(recurse=False)):
            raise NotImplementedError(f"token-wise FLOPs of {type(m).__name__} are not defined")
    return total


def _linear_cost(m: nn.Module | None) -> int:
    """in * out of a Linear (0 for None / Identity)."""
    if m is None or isinstance(m, nn.Identity):
        return 0
    if not isinstance(m, nn.Linear):
        raise NotImplementedError(f"expected nn.Linear or Identity, got {type(m).__name__}")
    return m.in_features * m.out_features


# --------------------------------------------------------------------------------------------------
# patch embedding (measured once per model and image size by forward hooks)
# --------------------------------------------------------------------------------------------------
_EMBED_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[Any, float, int]]" = weakref.WeakKeyDictionary()


def _leaf_hook_cost(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> float:
    """FLOPs of one leaf module of the stem for one image, from its input/output shapes."""
    if isinstance(m, _ConvNd):
        if m.transposed:
            raise NotImplementedError("transposed convolutions in the patch embedding are not supported")
        out_c, in_per_group, *kernel = m.weight.shape
        spatial = math.prod(out.shape[2:])
        return spatial * out_c * in_per_group * math.prod(kernel)  # == fvcore: prod(w) * prod(out_hw)
    if isinstance(m, _BatchNorm):
        return inp.numel() * _norm_cost_per_element(m)
    if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
        return inp.numel() * _norm_cost_per_element(m)
    if isinstance(m, nn.Linear):
        return (inp.numel() // m.in_features) * m.in_features * m.out_features
    if any(True for _ in m.parameters(recurse=False)):
        raise NotImplementedError(f"FLOPs of {type(m).__name__} in the patch embedding are not defined")
    return 0.0  # activations, pooling, dropout, identity: not counted (fvcore convention)


def _model_img_size(model: nn.Module) -> tuple[int, int]:
    pe = model.patch_embed
    size = getattr(pe, "img_size", None)
    if size is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        size = cfg.get("input_size", (None, None, None))[1:]
        if size[0] is None:
            raise ValueError("cannot infer the model's image size (patch_embed.img_size is None)")
    if isinstance(size, int):
        size = (size, size)
    return int(size[0]), int(size[1])


def _in_chans(pe: nn.Module) -> int:
    for m in pe.modules():
        if isinstance(m, _ConvNd):
            return m.in_channels
        if isinstance(m, nn.Linear):
            return m.in_features
    raise ValueError("patch_embed contains no convolution or linear layer")


def _embed_flops(model: nn.Module) -> tuple[float, int]:
    """(FLOPs of model.patch_embed on one image of the model's img_size, tokens it produces)."""
    pe = model.patch_embed
    img = _model_img_size(model)
    key = (img, id(pe))
    cached = _EMBED_CACHE.get(model)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]

    param = next(pe.parameters())
    x = torch.zeros(1, _in_chans(pe), *img, device=param.device, dtype=param.dtype)
    total = [0.0]

    def hook(m: nn.Module, args: tuple, out: Any) -> None:
        total[0] += _leaf_hook_cost(m, args[0], out)

    leaves = [m for m in pe.modules() if not any(True for _ in m.children())]
    modes = {m: m.training for m in pe.modules()}
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        pe.eval()  # no running-stat updates; BN counted in inference mode
        with torch.no_grad():
            out = pe(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    n_patches = getattr(pe, "num_patches", None)
    if n_patches is None:  # (B, N, C) tokens or a (B, H, W, C) / (B, C, H, W) map
        n_patches = out.shape[1] if out.dim() == 3 else math.prod(out.shape[1:3])
    _EMBED_CACHE[model] = (key, total[0], int(n_patches))
    return total[0], int(n_patches)


