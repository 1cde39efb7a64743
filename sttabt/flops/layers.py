"""FLOPs of a host's transformer layers from the token counts each one runs on, read from its host
adapter (:meth:`sttabt.hosts.base.HostAdapter.layer_cost`): the same adapter the executors run, so any
host with an adapter is counted (timm ViTs and LV-ViT, BERT, RoBERTa)."""
from __future__ import annotations

import torch

from .costs import CONSISTENCY_TOL, FlopsReport


def check_counts(counts: torch.Tensor, depth: int) -> None:
    """``counts`` (L + 1, B): positive, and no layer outputs more tokens than it reads."""
    if counts.dim() != 2 or counts.shape[0] != depth + 1:
        raise ValueError(f"counts must have shape (L + 1, B) = ({depth + 1}, B), got {tuple(counts.shape)}")
    if bool((counts <= 0).any()):
        raise ValueError("token counts must be positive")
    n_in, n_out = counts[:-1], counts[1:]
    if bool((n_out > n_in + CONSISTENCY_TOL * n_in).any()):
        raise ValueError("a layer cannot output more tokens than it reads (n_out[l] <= n_in[l])")


def layer_flops(host, counts: torch.Tensor, *, last_mlp: bool = True, last_attn_scores_only: bool = False,
                online: bool = False, rows_out: torch.Tensor | None = None) -> list[float]:
    """Batch-mean FLOPs of each layer of ``host`` (a :class:`~sttabt.hosts.base.HostAdapter`) for the
    (L + 1, B) ``counts``: ``counts[l]`` tokens enter layer ``l``, ``counts[L]`` leave the last one.
    ``last_mlp=False``: the last layer's feed-forward is not run; ``last_attn_scores_only``: the last
    layer stops at its attention scores (a planning pass); ``online``: an online pruner decided, so
    each layer also computed the queries and scores of the tokens it dropped; ``rows_out`` (L, B):
    the rows each layer's per-token output work ran on, when not ``counts[1:]`` (see
    :func:`sttabt.flops.analytic.executed_counts`)."""
    layers = list(host.layers)
    counts = torch.as_tensor(counts).detach().to(device="cpu", dtype=torch.float64)
    check_counts(counts, len(layers))
    flops = []
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        cost = host.layer_cost(layer, mlp=last_mlp or not last, scores_only=last and last_attn_scores_only)
        rows = None if rows_out is None else torch.as_tensor(rows_out)[i].to(torch.float64)
        flops.append(cost.flops(counts[i], counts[i + 1], online=online, rows_out=rows).mean().item())
    return flops


def encoder_flops(host, counts: torch.Tensor, **switches) -> FlopsReport:
    """The layers' FLOPs (:func:`layer_flops`, same switches) as a report with no embedding or head:
    the encoder of a text host, per example."""
    return FlopsReport.build(0.0, layer_flops(host, counts, **switches), 0.0)
