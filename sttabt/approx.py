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
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from .executors import HostOutput, forward_masked
from .fused_scout import scout_queries_keys
from .pruners.qk import keeps_maps
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
    norm = host.fc_norm if isinstance(host.norm, nn.Identity) else host.norm  # an avg head's norm is fc_norm
    kwargs = dict(
        img_size=tuple(patch.img_size), patch_size=tuple(patch.patch_size), in_chans=_in_chans(host),
        num_classes=host.num_classes, embed_dim=dim // factor, depth=len(host.blocks),
        num_heads=block.attn.num_heads, mlp_ratio=block.mlp.fc1.out_features / dim,
        qkv_bias=block.attn.qkv.bias is not None, class_token=True, global_pool="token",
        norm_layer=functools.partial(type(norm), eps=norm.eps),
        act_layer=type(block.mlp.act),
    )
    # the same prefix tokens and pooling as the host: the scout's plan covers the host's tokens
    if getattr(host, "num_reg_tokens", 0):
        kwargs["reg_tokens"] = host.num_reg_tokens
    if host.global_pool != "token":
        kwargs.update(global_pool=host.global_pool, class_token=host.cls_token is not None,
                      fc_norm=not isinstance(host.fc_norm, nn.Identity))
    if getattr(host, "no_embed_class", False):
        kwargs["no_embed_class"] = True
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


def interpolated_state(shapes: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]
                       ) -> dict[str, torch.Tensor]:
    """Every tensor of ``shapes`` (a student's state dict) made from ``source`` (the teacher's), resized
    by linear interpolation. Fused ``qkv`` tensors are resized per q/k/v part so that the parts do not
    bleed into each other; tensors that are not floating point are copied."""
    out = {}
    for name, target in shapes.items():
        src = source[name]
        if not target.is_floating_point():
            out[name] = src.clone()
        elif name.endswith(("qkv.weight", "qkv.bias")):
            parts = src.reshape(3, -1, *src.shape[1:])
            out[name] = resize_linear(parts, (3, target.shape[0] // 3, *target.shape[1:])).reshape(target.shape)
        else:
            out[name] = resize_linear(src, target.shape)
    return out


@torch.no_grad()
def interpolate_init_(student: nn.Module, teacher: nn.Module) -> None:
    """Copy every teacher tensor into the student, resized by linear interpolation
    (:func:`interpolated_state`)."""
    target = student.state_dict()
    for name, value in interpolated_state(target, teacher.state_dict()).items():
        target[name].copy_(value)


# the parts of a thin copy that only distillation uses (the prediction loss needs the scout's output):
# planning stops at the last layer's attention logits, which need only that block's norm1, q and k
DISTILL_ONLY_TOP = ("norm", "fc_norm", "head", "head_dist", "aux_head")
DISTILL_ONLY_LAST_BLOCK = ("attn.proj", "attn.norm", "ls1", "norm2", "mlp", "ls2")


def distill_only_paths(depth: int) -> tuple[str, ...]:
    """Module paths (in a thin copy of depth ``depth``) that planning never runs."""
    return DISTILL_ONLY_TOP + tuple(f"blocks.{depth - 1}.{p}" for p in DISTILL_ONLY_LAST_BLOCK)


class DistillOnly(nn.Module):
    """Stands in the scout for a module that only distillation uses (it lives in
    :class:`ScoutStudent`); calling it is a mistake that says so."""

    def forward(self, *args, **kwargs):
        raise RuntimeError("this part of the scout is used only in distillation and is not in the planning "
                           "scout: run sttabt.approx.ScoutStudent(scout, teacher) for the full scout output")


def _strip(net: nn.Module) -> None:
    for path in distill_only_paths(len(net.blocks)):
        parent_path, _, name = path.rpartition(".")
        parent = net.get_submodule(parent_path) if parent_path else net
        if isinstance(getattr(parent, name, None), nn.Module):
            setattr(parent, name, DistillOnly())


def drop_distillation_keys(state: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
    """``state`` without the entries of scout parts that older checkpoints kept in the planning scout
    (the last block's MLP, the head, ``hidden_proj``, ...) and ``model`` (an STTABT model or an
    :class:`ApproxNet`) no longer has: old STTABT checkpoints and scout files load as before."""
    expected = model.state_dict()
    scout = model.scout if hasattr(model, "scout") else model
    if scout is None:  # an online pruner's model has no scout
        return dict(state)
    depth, base = len(scout.net.blocks), ("scout." if scout is not model else "")
    stale = tuple(f"{base}net.{p}." for p in distill_only_paths(depth)) + (f"{base}hidden_proj.",)
    return {k: v for k, v in state.items() if k in expected or not k.startswith(stale)}


class ApproxNet(nn.Module):
    """Thin scout of a host, for planning: ``forward`` returns a :class:`HostOutput` with every layer's
    attention and the hidden states before the last layer, and stops there (``scores_only``).
    With ``attention="probs"`` (the top-k planners) the attention is a
    :class:`sttabt.pruners.qk.QKAttention`: the scout runs fused attention and keeps each layer's thin
    queries and keys; ``attention[l]`` makes layer ``l``'s map on demand and the back-tracking
    planners compute only the rows they read. ``"logits"`` (concrete masks) returns every layer's
    logits as tensors, computed once in the scout's own attention: the concrete recursion runs on the
    soft masks, which are nonzero on every valid token, so it reads every row, hard masks included.

    ``net`` is a thin copy of the host (same class) without the parts only distillation uses (see
    :func:`distill_only_paths`): every parameter it holds feeds the plan, so it gets a gradient
    whenever the plan does (no unused parameters under DDP). :class:`ScoutStudent` adds those parts
    back for distillation.
    """

    def __init__(self, host: VisionTransformer, factor: int = DEFAULT_FACTOR, init: str = "interpolate"):
        super().__init__()
        if init not in ("interpolate", "random"):
            raise ValueError(f"init must be 'interpolate' or 'random', got {init!r}")
        self.factor = factor
        self.net = type(host)(**thin_kwargs(host, factor))
        _strip(self.net)
        if init == "interpolate":
            self.reset_from(host)

    def reset_from(self, host: VisionTransformer) -> None:
        """Interpolated init of the scout from (new) teacher weights."""
        interpolate_init_(self.net, host)

    def forward(self, images: torch.Tensor, *, attention: str = "logits", scores_only: bool = True
                ) -> HostOutput:
        """Every layer's attention (``"logits"`` or head-averaged ``"probs"``) and the hidden states up
        to the last layer's input (all that pruning needs)."""
        if not scores_only:
            raise ValueError("the planning scout stops at the last layer's attention; for its full output "
                             "(distillation) use sttabt.approx.ScoutStudent(scout, teacher)")
        if attention == "probs" or keeps_maps(images):  # the logits' key scores are made in the pass
            return scout_queries_keys(self.net, images, attention)
        return forward_masked(self.net, images, record=True, attention=attention, scores_only=True)


def _tie(full: nn.Module, planner: nn.Module, distilled: tuple[str, ...], prefix: str = "") -> None:
    """Make ``full`` use ``planner``'s modules and parameters wherever ``planner`` has them."""
    for name, child in list(planner.named_children()):
        path = prefix + name
        if isinstance(child, DistillOnly):
            continue
        if any(d.startswith(path + ".") for d in distilled):
            _tie(getattr(full, name), child, distilled, path + ".")
        else:
            setattr(full, name, child)
    for name, param in planner.named_parameters(recurse=False):
        setattr(full, name, param)


class ScoutStudent(nn.Module):
    """The scout as distillation trains it: the planning scout plus what only distillation uses.

    ``full`` is a complete thin copy of the teacher that shares every module of ``scout.net`` (the
    same parameters) and owns the rest (the last block's output path, final norm, head), interpolated
    from ``teacher``; ``hidden_proj`` maps scout hidden states to the teacher's width (L_hid). So
    training the student trains the planning scout in place. ``forward`` runs the whole thin model.
    """

    def __init__(self, scout: ApproxNet, teacher: VisionTransformer):
        super().__init__()
        self.scout = scout
        self.factor = scout.factor
        full = type(teacher)(**thin_kwargs(teacher, scout.factor)).to(next(scout.parameters()).device)
        interpolate_init_(full, teacher)
        _tie(full, scout.net, distill_only_paths(len(full.blocks)))
        self.full = full
        self.hidden_proj = nn.Linear(full.embed_dim, teacher.embed_dim, device=full.cls_token.device)

    @property
    def net(self) -> nn.Module:
        return self.full

    def forward(self, images: torch.Tensor, *, attention: str = "logits", scores_only: bool = False
                ) -> HostOutput:
        """Every layer's attention, hidden states and logits of the whole thin model."""
        return forward_masked(self.full, images, record=True, attention=attention, scores_only=scores_only)


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
