"""Analytic FLOPs of (token-pruned) ViTs from the token counts each layer runs on."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .costs import (ATTN_MATMULS, CONSISTENCY_TOL, GIGA, QKV_SPLIT, FlopsReport, _embed_flops, _linear_cost,
                    _norm_cost_per_element, _per_token_cost)

# --------------------------------------------------------------------------------------------------
# analytic model: per-layer coefficients of n_in, n_out and n_in * n_out
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _LayerCoef:
    per_in: float  # FLOPs per key/value token
    per_out: float  # FLOPs per query (= output) token
    per_pair: float  # FLOPs per (query, key) pair


def _block_coef(blk: nn.Module, *, mlp: bool, scores_only: bool) -> _LayerCoef:
    from timm.models.vision_transformer import ResPostBlock  # post-norm: norm1 acts on outputs

    if isinstance(blk, ResPostBlock):
        raise NotImplementedError("post-norm blocks (ResPostBlock) are not supported")
    attn = blk.attn
    qkv = getattr(attn, "qkv", None)
    if not isinstance(qkv, nn.Linear):
        raise NotImplementedError(f"attention {type(attn).__name__} without a fused qkv Linear")
    dim = qkv.in_features
    attn_dim = qkv.out_features // QKV_SPLIT
    heads = attn.num_heads
    head_dim = getattr(attn, "head_dim", attn_dim // heads)
    if heads * head_dim != attn_dim:
        raise ValueError(f"num_heads * head_dim = {heads * head_dim} != qkv width / 3 = {attn_dim}")

    proj_one = dim * attn_dim  # one of q / k / v for one token
    per_in = _norm_cost_per_element(blk.norm1) * dim
    per_in += proj_one * (1 if scores_only else 2)  # k (+ v)
    per_in += _norm_cost_per_element(getattr(attn, "k_norm", nn.Identity())) * attn_dim
    per_out = proj_one  # q
    per_out += _norm_cost_per_element(getattr(attn, "q_norm", nn.Identity())) * attn_dim
    per_pair = heads * head_dim * (1 if scores_only else ATTN_MATMULS)
    if not scores_only:
        per_out += _linear_cost(getattr(attn, "gate", None))  # optional gated attention (query side)
        per_out += _norm_cost_per_element(getattr(attn, "norm", nn.Identity())) * attn_dim
        per_out += _linear_cost(attn.proj)
        if mlp:
            per_out += _norm_cost_per_element(blk.norm2) * dim
            per_out += _per_token_cost(blk.mlp)
    return _LayerCoef(float(per_in), float(per_out), float(per_pair))


def _head_coef(model: nn.Module) -> tuple[float, float, float]:
    """(FLOPs per token leaving the last layer, FLOPs per non-prefix such token, constant)."""
    if getattr(model, "attn_pool", None) is not None:
        raise NotImplementedError("attention-pooling (MAP) heads are not supported")
    dim = model.embed_dim
    per_token = _norm_cost_per_element(model.norm) * dim
    const = _norm_cost_per_element(getattr(model, "fc_norm", nn.Identity())) * dim
    const += _linear_cost(model.head)  # on the pooled (CLS) vector
    const += _linear_cost(getattr(model, "head_dist", None))  # DeiT distillation token head
    aux = getattr(model, "aux_head", None)
    per_patch = float(_linear_cost(aux))  # LV-ViT token labelling: every non-prefix token
    return float(per_token), per_patch, float(const)


def _evaluate(
    model: nn.Module,
    counts: torch.Tensor,
    *,
    head: bool,
    last_mlp: bool,
    last_attn_scores_only: bool,
) -> FlopsReport:
    """Batch-mean report for float64 counts of shape (L + 1, B)."""
    blocks = list(model.blocks)
    depth = len(blocks)
    if counts.dim() != 2 or counts.shape[0] != depth + 1:
        raise ValueError(f"counts must have shape (L + 1, B) = ({depth + 1}, B), got {tuple(counts.shape)}")
    if head and last_attn_scores_only:
        raise ValueError("last_attn_scores_only=True leaves no tokens for a head; pass head=False")
    n_in, n_out = counts[:-1], counts[1:]
    if bool((counts <= 0).any()):
        raise ValueError("token counts must be positive")
    if bool((n_out > n_in + CONSISTENCY_TOL * n_in).any()):
        raise ValueError("a layer cannot output more tokens than it reads (n_out[l] <= n_in[l])")

    embed, _ = _embed_flops(model)
    norm_pre = getattr(model, "norm_pre", nn.Identity())  # before the blocks, on the dense sequence
    embed += _norm_cost_per_element(norm_pre) * model.embed_dim * _dense_tokens(model)

    per_layer = []
    for i, blk in enumerate(blocks):
        last = i == depth - 1
        c = _block_coef(blk, mlp=last_mlp or not last, scores_only=last and last_attn_scores_only)
        f = c.per_in * n_in[i] + c.per_out * n_out[i] + c.per_pair * n_in[i] * n_out[i]
        per_layer.append(f.mean().item())

    head_flops = 0.0
    if head:
        per_token, per_patch, const = _head_coef(model)
        leaving = counts[-1]
        patches = (leaving - model.num_prefix_tokens).clamp(min=0)
        head_flops = (per_token * leaving + per_patch * patches).mean().item() + const
    return FlopsReport.build(embed, per_layer, head_flops)


def _dense_tokens(model: nn.Module) -> int:
    """Tokens every layer sees without pruning: patches + prefix (class / distillation / register)."""
    _, n_patches = _embed_flops(model)
    return n_patches + int(getattr(model, "num_prefix_tokens", 1))


def _resolve_counts(
    model: nn.Module, n_in: Sequence[float] | None, n_out: Sequence[float] | None
) -> list[float]:
    """The (L + 1) token counts: n_in of every layer, then the tokens leaving the last one."""
    depth = len(model.blocks)
    if n_in is None and n_out is None:
        return [float(_dense_tokens(model))] * (depth + 1)
    if n_in is not None:
        n_in = [float(v) for v in n_in]
        if len(n_in) != depth:
            raise ValueError(f"n_in must have one entry per layer ({depth}), got {len(n_in)}")
    if n_out is not None:
        n_out = [float(v) for v in n_out]
        if len(n_out) != depth:
            raise ValueError(f"n_out must have one entry per layer ({depth}), got {len(n_out)}")
    if n_in is None:  # the first layer reads the dense sequence
        n_in = [float(_dense_tokens(model))] + n_out[:-1]
    if n_out is None:  # the last layer keeps what it reads
        n_out = n_in[1:] + [n_in[-1]]
    for i in range(depth - 1):
        if abs(n_out[i] - n_in[i + 1]) > CONSISTENCY_TOL * max(1.0, abs(n_in[i + 1])):
            raise ValueError(f"n_out[{i}] = {n_out[i]} != n_in[{i + 1}] = {n_in[i + 1]}")
    return n_in + [n_out[-1]]


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------
def vit_flops(
    model: nn.Module,
    n_in: Sequence[float] | None = None,
    n_out: Sequence[float] | None = None,
    *,
    head: bool = True,
    last_mlp: bool = True,
    last_attn_scores_only: bool = False,
) -> FlopsReport:
    """FLOPs of one image through a timm ``VisionTransformer`` whose layers see the given token counts.

    Args:
        model: a timm ``VisionTransformer`` (DeiT / ViT with class token, LV-ViT subclass, ...).
        n_in: tokens read by each layer (key/value set, prefix included); default dense
            (``num_patches + num_prefix_tokens``); if only ``n_out`` is given, ``n_in[0]`` is dense.
        n_out: tokens each layer outputs (its query set, ``n_out[l] == n_in[l + 1]``); if only ``n_in``
            is given the last layer keeps its tokens. Floats (batch means) are accepted; the attention
            term then uses ``mean(n_in) * mean(n_out)`` - use :func:`vit_flops_per_sample` to be exact.
        head: count the final norm (on the tokens leaving the last layer) + classifier (+ aux) head.
        last_mlp: count ``norm2`` + MLP of the last layer (False for a network read only for attention).
        last_attn_scores_only: the last layer computes only q, k and the attention scores (no v, no
            weighted sum, no output projection, no MLP): the thin approximation network. Needs head=False.
    """
    counts = torch.tensor(_resolve_counts(model, n_in, n_out), dtype=torch.float64).unsqueeze(1)
    return _evaluate(model, counts, head=head, last_mlp=last_mlp, last_attn_scores_only=last_attn_scores_only)


def vit_flops_per_sample(
    model: nn.Module,
    counts: torch.Tensor,
    *,
    head: bool = True,
    last_mlp: bool = True,
    last_attn_scores_only: bool = False,
) -> FlopsReport:
    """Batch-mean FLOPs per image, computed exactly per sample (vectorised over the batch).

    ``counts`` is a (L + 1, B) integer tensor: ``counts[l, b]`` tokens enter layer ``l`` for sample ``b``
    and ``counts[L, b]`` tokens leave the last layer. Switches as in :func:`vit_flops`.
    """
    counts = torch.as_tensor(counts).detach().to(device="cpu", dtype=torch.float64)
    return _evaluate(model, counts, head=head, last_mlp=last_mlp, last_attn_scores_only=last_attn_scores_only)


@dataclass(frozen=True)
class ModelFlops:
    """FLOPs per image of an STTABT model on a batch: pruned host + the pass its pruner reads."""

    host: FlopsReport           # the host under the plan (per-sample exact, batch mean)
    scout: FlopsReport          # the scout (or, for the oracle, the host's dense attention pass)
    dense: FlopsReport          # the dense host
    keep_per_layer: tuple[float, ...]  # mean share of tokens each layer takes in

    @property
    def total(self) -> float:
        return self.host.total + self.scout.total

    def to_dict(self) -> dict[str, Any]:
        return {
            "gflops": self.total / GIGA, "dense_gflops": self.dense.gflops,
            "host_gflops": self.host.gflops, "scout_gflops": self.scout.gflops,
            "keep_per_layer": list(self.keep_per_layer),
            "keep_mean": sum(self.keep_per_layer) / len(self.keep_per_layer),
        }


def sttabt_flops(model: nn.Module, masks: torch.Tensor, *, executed: bool = False) -> ModelFlops:
    """FLOPs of an ``sttabt.STTABT`` model that ran on a batch with the hard plan ``masks``.

    By default each image is counted with its own token counts (the method's cost). With
    ``executed=True`` every image is counted at the batch maximum per layer, which is what the pruned
    executor computes when counts differ across the batch (``budget="per_sample"`` pads).

    The scout runs dense and stops at the last layer's attention scores; the oracle pruner reads the
    host's own attention from the same kind of pass; the online pruners (``ltp``, ``evit``) need no
    planning pass (scout FLOPs 0). Planning itself (a few ``T x T``
    matrix-vector products per layer) is left out: under 0.1 % of the total.
    """
    from ..pruners.masks import counts as plan_counts

    counts = plan_counts(masks)
    if executed:
        counts = counts.amax(-1, keepdim=True).expand_as(counts)
    if getattr(model.pruner, "online", False):  # decides from the host's own pass: no planning pass
        scout = FlopsReport.build(0.0, [0.0] * len(model.host.blocks), 0.0)
    else:
        reader = model.scout.net if model.pruner.source == "approx" else model.host
        scout = vit_flops(reader, head=False, last_mlp=False, last_attn_scores_only=True)
    tokens = _dense_tokens(model.host)
    keep = model.layout.ratio(counts[:-1].double().mean(-1), tokens).tolist()  # prefix tokens are not patches
    host = vit_flops_per_sample(model.host, counts)
    if getattr(model.pruner, "online", False):
        host = _with_online_decisions(model.host, host, counts)
    return ModelFlops(host, scout, vit_flops(model.host), tuple(keep))


def _with_online_decisions(model: nn.Module, report: FlopsReport, counts: torch.Tensor) -> FlopsReport:
    """An online pruner decides from every live query's attention: layer ``l`` also computes the
    queries and attention scores of the ``n_in - n_out`` tokens it then drops (the weighted sum,
    output projection and MLP run on the ``n_out`` kept ones, as the planned count has it)."""
    blocks = []
    for layer, (block, flops) in enumerate(zip(model.blocks, report.blocks)):
        attn = block.attn
        n_in, n_out = counts[layer].double(), counts[layer + 1].double()
        dim = attn.num_heads * attn.head_dim
        query = attn.qkv.in_features * dim  # the q rows of the fused projection
        dropped = n_in - n_out
        blocks.append(flops + (dropped * (query + n_in * dim)).mean().item())
    return FlopsReport.build(report.embed, blocks, report.head)


