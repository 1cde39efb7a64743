"""The approximation network ("scout", STTABT section 3.1): a thin copy of the host.

Same depth and number of heads as the host, width ``D / factor`` and MLP width ``mlp / factor``, its
own thin patch embedding. Initialised from the teacher by resizing every teacher tensor to the
student's shape with linear interpolation ("interpolated init"), trained by distilling the
teacher's attention, hidden states and predictions (:func:`distillation_loss`). At inference it
only has to produce every layer's attention logits.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from .executors import HostOutput, forward_masked
from .inputs import check_factor

DEFAULT_FACTOR = 4
ATTN_EPS = 1e-7            # inside the attention KL
HIDDEN_WEIGHT_VISION = 0.01  # weight of L_hid for images (1 for text)
PRED_WEIGHT = 1.0          # weight of L_pred (MSE between softmax outputs)


def thin_kwargs(host: VisionTransformer, factor: int) -> dict:
    """Constructor arguments of a thin copy of ``host`` (same class)."""
    factor = check_factor(factor)
    dim = host.embed_dim
    if dim % factor or (dim // factor) % host.blocks[0].attn.num_heads:
        raise ValueError(f"factor {factor} does not divide width {dim} into "
                         f"{host.blocks[0].attn.num_heads} heads; choose another factor")
    block = host.blocks[0]
    patch = host.patch_embed
    kwargs = dict(
        img_size=tuple(patch.img_size), patch_size=tuple(patch.patch_size), in_chans=_in_chans(host),
        num_classes=host.num_classes, embed_dim=dim // factor, depth=len(host.blocks),
        num_heads=block.attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / dim,
        qkv_bias=block.attn.qkv.bias is not None, class_token=True, global_pool="token",
        norm_layer=functools.partial(type(host.norm), eps=host.norm.eps),
        act_layer=type(block.mlp.act),
    )
    extra = getattr(host, "thin_copy_kwargs", None)  # hosts with more knobs (LV-ViT's stem) add theirs
    if callable(extra):
        kwargs.update(extra(factor))
    return kwargs


def _in_chans(host: VisionTransformer) -> int:
    first = next(m for m in host.patch_embed.modules() if isinstance(m, nn.Conv2d))
    return first.in_channels


def resize_linear(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Resize ``t`` to ``shape`` with 1-D linear interpolation along every dimension that differs."""
    out = t.float()
    for dim, size in enumerate(shape):
        if out.shape[dim] == size:
            continue
        moved = out.movedim(dim, -1)
        lead = moved.shape[:-1]
        resized = F.interpolate(moved.reshape(1, -1, moved.shape[-1]), size=size, mode="linear",
                                align_corners=True)
        out = resized.reshape(*lead, size).movedim(-1, dim)
    return out.to(t.dtype)


@torch.no_grad()
def interpolate_init_(student: nn.Module, teacher: nn.Module) -> None:
    """Copy every teacher tensor into the student, resized by linear interpolation.

    Fused ``qkv`` tensors are resized per q/k/v part so that the parts do not bleed into each other.
    """
    source = teacher.state_dict()
    for name, target in student.state_dict().items():
        src = source[name]
        if not target.is_floating_point():
            target.copy_(src)
        elif name.endswith(("qkv.weight", "qkv.bias")):
            parts = src.reshape(3, -1, *src.shape[1:])
            target.copy_(resize_linear(parts, (3, target.shape[0] // 3, *target.shape[1:])).reshape(target.shape))
        else:
            target.copy_(resize_linear(src, target.shape))


class ApproxNet(nn.Module):
    """Thin scout of a host. ``forward`` returns a :class:`HostOutput` with every layer's logits."""

    def __init__(self, host: VisionTransformer, factor: int = DEFAULT_FACTOR, init: str = "interpolate"):
        super().__init__()
        if init not in ("interpolate", "random"):
            raise ValueError(f"init must be 'interpolate' or 'random', got {init!r}")
        self.factor = factor
        self.net = type(host)(**thin_kwargs(host, factor))
        # L_hid: a learned projection of the scout's hidden states to the host's width
        self.hidden_proj = nn.Linear(self.net.embed_dim, host.embed_dim)
        if init == "interpolate":
            self.reset_from(host)

    def reset_from(self, host: VisionTransformer) -> None:
        """Interpolated init of the scout from (new) teacher weights."""
        interpolate_init_(self.net, host)

    def forward(self, images: torch.Tensor, *, attention: str = "logits", scores_only: bool = False
                ) -> HostOutput:
        """Every layer's attention (``"logits"`` or head-averaged ``"probs"``), hidden states and
        logits; ``scores_only`` stops after the last layer's attention (all that pruning needs)."""
        return forward_masked(self.net, images, record=True, attention=attention, scores_only=scores_only)


@dataclass
class DistillLosses:
    total: torch.Tensor
    attention: torch.Tensor
    hidden: torch.Tensor
    embedding: torch.Tensor
    prediction: torch.Tensor


def attention_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                 valid: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher row || student row) per layer and head, mean over (valid) queries. Scalar."""
    if valid is not None:
        keys = ~valid[:, None, None, :]
        teacher_logits = teacher_logits.masked_fill(keys, float("-inf"))
        student_logits = student_logits.masked_fill(keys, float("-inf"))
    t = teacher_logits.float().softmax(-1)
    s = student_logits.float().softmax(-1)
    kl = (t * ((t + ATTN_EPS).log() - (s + ATTN_EPS).log())).sum(-1)  # (B, H, T)
    if valid is None:
        return kl.mean()
    rows = valid[:, None, :].expand_as(kl).float()
    return (kl * rows).sum() / rows.sum()


def distillation_loss(
    student: HostOutput,
    teacher: HostOutput,
    hidden_proj: nn.Module,
    *,
    hidden_weight: float = HIDDEN_WEIGHT_VISION,
    pred_weight: float = PRED_WEIGHT,
    valid: torch.Tensor | None = None,
) -> DistillLosses:
    """``L = L_att + hidden_weight * L_hid + L_emb + pred_weight * L_pred`` (section 3.1).

    ``L_att``: attention KL averaged over layers; ``L_hid``: MSE between projected scout hidden states
    and the teacher's for the embedding output and every layer but the last; ``L_emb``: the same for
    the embedding output alone; ``L_pred``: MSE between the softmax outputs (trains the scout's head).
    Both outputs must be recorded (``record=True``) with attention logits and class logits.
    """
    depth = len(teacher.attention)
    if len(student.attention) != depth or len(student.hidden) != depth + 1:
        raise ValueError("student and teacher outputs must both be recorded over the same depth")
    l_att = torch.stack([attention_kl(t, s, valid) for t, s in zip(teacher.attention, student.attention)]).mean()
    pairs = list(zip(student.hidden[:depth], teacher.hidden[:depth]))  # embedding + layers 0..L-2
    l_hid = torch.stack([F.mse_loss(hidden_proj(s), t) for s, t in pairs]).mean()
    l_emb = F.mse_loss(hidden_proj(student.hidden[0]), teacher.hidden[0])
    l_pred = F.mse_loss(student.logits.softmax(-1), teacher.logits.softmax(-1))
    total = l_att + hidden_weight * l_hid + l_emb + pred_weight * l_pred
    return DistillLosses(total, l_att, l_hid, l_emb, l_pred)
