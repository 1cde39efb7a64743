"""Validation of each stage, sharded over processes and reduced exactly (sums, then one division)."""
from __future__ import annotations

import torch
from torch import nn

from ..approx import distillation_loss
from ..executors import forward_masked
from ..flops import sttabt_flops
from .distributed import Dist


def _reduce(d: Dist, sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = sorted(sums)
    flat = d.all_sum(torch.cat([sums[k].double().reshape(-1).cpu() for k in keys]))
    out, start = {}, 0
    for k in keys:
        n = sums[k].numel()
        out[k] = flat[start:start + n].reshape(sums[k].shape)
        start += n
    return out


def _add(sums: dict, key: str, value: torch.Tensor) -> None:
    value = value.detach().double().cpu()
    sums[key] = sums[key] + value if key in sums else value


@torch.no_grad()
def top1(model: nn.Module, loader, d: Dist) -> float:
    """Top-1 accuracy (%) of a plain classifier."""
    model.eval()
    sums: dict = {}
    for images, targets in loader:
        logits = model(images.to(d.device))
        _add(sums, "correct", (logits.argmax(-1).cpu() == targets).sum())
        _add(sums, "count", torch.tensor(len(targets)))
    sums = _reduce(d, sums)
    return 100.0 * float(sums["correct"] / sums["count"])


@torch.no_grad()
def scout_quality(teacher: nn.Module, scout: nn.Module, loader, d: Dist) -> dict[str, float]:
    """Validation distillation losses of the scout (mean attention KL first)."""
    teacher.eval()
    scout.eval()
    sums: dict = {}
    for images, _ in loader:
        images = images.to(d.device)
        t = forward_masked(teacher, images, record=True, attention="logits")
        losses = distillation_loss(scout(images, attention="logits"), t, scout.hidden_proj)
        for name in ("total", "attention", "hidden", "embedding", "prediction"):
            _add(sums, name, getattr(losses, name) * len(images))
        _add(sums, "count", torch.tensor(len(images)))
    sums = _reduce(d, sums)
    n = sums.pop("count")
    names = {"total": "distill_loss", "attention": "attention_kl", "hidden": "hidden_mse",
             "embedding": "embedding_mse", "prediction": "prediction_mse"}
    return {names[k]: float(v / n) for k, v in sums.items()}


@torch.no_grad()
def sttabt_metrics(model: nn.Module, loader, d: Dist) -> dict:
    """Hard-mask top-1 (pruned executor, the reported number), soft-mask top-1 (masked executor),
    share of tokens each layer takes in under the hard masks, and GFLOPs per image (scout included)."""
    model.eval()
    sums: dict = {}
    for images, targets in loader:
        images, n = images.to(d.device), len(targets)
        hard = model.forward_detailed(images, hard=True, executor="pruned")
        soft = model.forward_detailed(images, hard=False, executor="masked")
        flops = sttabt_flops(model, hard.masks)
        _add(sums, "hard_correct", (hard.logits.argmax(-1).cpu() == targets).sum())
        _add(sums, "soft_correct", (soft.logits.argmax(-1).cpu() == targets).sum())
        _add(sums, "keep", torch.tensor(flops.keep_per_layer) * n)
        _add(sums, "soft_keep", soft.masks[:-1].float().mean((1, 2)).cpu() * n)
        _add(sums, "flops", torch.tensor(flops.total) * n)
        _add(sums, "count", torch.tensor(n))
    sums = _reduce(d, sums)
    n = sums["count"]
    keep = (sums["keep"] / n).tolist()
    return {
        "hard_top1": 100.0 * float(sums["hard_correct"] / n),
        "soft_top1": 100.0 * float(sums["soft_correct"] / n),
        "keep_mean": sum(keep) / len(keep),
        "keep_per_layer": [round(k, 5) for k in keep],
        "soft_keep_mean": float(sums["soft_keep"].mean() / n),
        "gflops": float(sums["flops"] / n) / 1e9,
        "dense_gflops": flops.dense.gflops,
        "scout_gflops": flops.scout.gflops,
    }


EMA_KEYS = ("hard_top1", "soft_top1", "keep_mean", "gflops")  # what is reported of a pruned model's EMA


def sttabt_metrics_with_ema(model, ema, loader, dist) -> dict:
    """:func:`sttabt_metrics` of ``model``, plus ``ema_<key>`` of the EMA weights when there are any."""
    metrics = sttabt_metrics(model, loader, dist)
    if ema is not None:
        metrics.update({f"ema_{k}": v for k, v in sttabt_metrics(ema, loader, dist).items() if k in EMA_KEYS})
    return metrics
