"""Analytic FLOPs of (token-pruned) ViTs from the token counts each layer runs on: the layers through
the host adapter (:mod:`sttabt.flops.layers`), the patch embedding and the head here."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from .costs import CONSISTENCY_TOL, GIGA, FlopsReport, _embed_flops, _linear_cost, _norm_cost_per_element
from .layers import check_counts, layer_flops


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
    online: bool = False,
    rows_out: torch.Tensor | None = None,
) -> FlopsReport:
    """Batch-mean report for float64 counts of shape (L + 1, B) (``rows_out``: see :func:`layer_flops`)."""
    from ..hosts.timm_vit import TimmViTAdapter

    check_counts(counts, len(model.blocks))
    if head and last_attn_scores_only:
        raise ValueError("last_attn_scores_only=True leaves no tokens for a head; pass head=False")
    embed, _ = _embed_flops(model)
    norm_pre = getattr(model, "norm_pre", nn.Identity())  # before the blocks, on the dense sequence
    embed += _norm_cost_per_element(norm_pre) * model.embed_dim * _dense_tokens(model)

    per_layer = layer_flops(TimmViTAdapter(model), counts, last_mlp=last_mlp,
                            last_attn_scores_only=last_attn_scores_only, online=online, rows_out=rows_out)

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


def executed_counts(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the pruned executor runs for per-sample ``counts`` (L + 1, B): every layer's keys and
    attention at the batch's widest sets, ``(L + 1, B)``, and its per-token output work, ``(L, B)``, on
    the real rows where it packs them (:func:`sttabt.executors.rows.worth_packing`), else at the widest."""
    from ..executors.rows import worth_packing

    widest = counts.amax(-1, keepdim=True).expand_as(counts)
    rows = widest[1:].clone()
    for layer, out in enumerate(counts[1:]):
        ragged = bool(out.amin() != out.amax())
        if ragged and worth_packing(int(out.sum()), out.numel(), int(out.amax())):
            rows[layer] = out
    return widest, rows


def sttabt_flops(model: nn.Module, masks: torch.Tensor, *, executed: bool = False) -> ModelFlops:
    """FLOPs of an ``sttabt.STTABT`` model that ran on a batch with the hard plan ``masks``.

    By default each image is counted with its own token counts (the method's cost). With
    ``executed=True`` the counts are what the pruned executor computes when counts differ across the
    batch (``budget="per_sample"`` pads, :func:`executed_counts`): keys and attention at the batch
    maximum per layer, the per-token output work on the real rows where the executor packs them.

    The scout runs dense and stops at the last layer's attention scores; the oracle pruner reads the
    host's own attention from the same kind of pass; the online pruners (``ltp``, ``evit``) need no
    planning pass (scout FLOPs 0). Planning itself (a few ``T x T``
    matrix-vector products per layer) is left out: under 0.1 % of the total.
    """
    from ..pruners.masks import counts as plan_counts

    online = getattr(model.pruner, "online", False)
    counts, rows_out = plan_counts(masks), None
    if executed:
        counts, rows_out = executed_counts(counts)
    if online:  # decides from the host's own pass: no planning pass
        scout = FlopsReport.build(0.0, [0.0] * len(model.host.blocks), 0.0)
    else:
        reader = model.scout.net if model.pruner.source == "approx" else model.host
        scout = vit_flops(reader, head=False, last_mlp=False, last_attn_scores_only=True)
    tokens = _dense_tokens(model.host)
    keep = model.layout.ratio(counts[:-1].double().mean(-1), tokens).tolist()  # prefix tokens are not patches
    host = _evaluate(model.host, counts.double(), head=True, last_mlp=True, last_attn_scores_only=False,
                     online=online, rows_out=rows_out)  # online: dropped queries' scores too
    return ModelFlops(host, scout, vit_flops(model.host), tuple(keep))

