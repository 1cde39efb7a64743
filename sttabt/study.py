"""The image study: trained models against their dense controls, training-free pruners at equal GFLOPs.

A keep ratio means different things to different pruners (ABT keeps ``k`` of the tokens per layer
walking back from CLS; a forward schedule compounds), so comparing them at equal keep ratios compares
different budgets. Here every training-free pruner gets the schedule whose measured GFLOPs per image
(the scout included) match a target, found by bisection on one scalar ``r``:

* ``abt``: the same keep ratio ``r`` at every layer (back-tracking from CLS);
* ``manual``, ``evit_scout`` (CLS top-k on the scout's attention, planned) and ``evit`` (CLS top-k on
  the host's own attention, decided after each layer: no scout to pay for): a geometric forward
  schedule, layer ``l`` taking in ``r ** l`` of the tokens (layer 0 takes every token), EViT's
  compounding keep rate spread over every layer.

The targets are the GFLOPs of the trained concrete models, so each trained model has a training-free
row of each pruner at its own cost.
"""
from __future__ import annotations

import math
from typing import Callable

MATCH_TOLERANCE = 0.05      # relative: "equal GFLOPs" means within 5 %
BISECTION_STEPS = 20
SCHEDULES = {"abt": "uniform", "abt_oracle": "uniform", "manual": "geometric", "evit_scout": "geometric",
             "evit": "geometric"}


def schedule(pruner: str, depth: int, r: float) -> list[float]:
    """The per-layer keep ratios of ``pruner`` for the scalar ``r`` in (0, 1]."""
    if not 0 < r <= 1:
        raise ValueError(f"r must lie in (0, 1], got {r}")
    if pruner not in SCHEDULES:
        raise ValueError(f"no schedule for pruner {pruner!r}: choose from {', '.join(SCHEDULES)}")
    if SCHEDULES[pruner] == "uniform":
        return [r] * depth
    return [max(r ** layer, 1e-6) for layer in range(depth)]


def match(cost: Callable[[float], float], target: float, *, lo: float = 1e-3, hi: float = 1.0,
          steps: int = BISECTION_STEPS) -> tuple[float, float]:
    """``(r, cost(r))`` with ``cost(r)`` closest to ``target`` among the points bisection visits;
    ``cost`` must not decrease with ``r`` (more tokens kept, more FLOPs)."""
    if not target > 0 or not math.isfinite(target):
        raise ValueError(f"the target GFLOPs must be a positive number, got {target}")
    best = min(((r, cost(r)) for r in (lo, hi)), key=lambda p: abs(p[1] - target))
    for _ in range(steps):
        mid = (lo + hi) / 2
        value = cost(mid)
        if abs(value - target) < abs(best[1] - target):
            best = (mid, value)
        if value < target:
            lo = mid
        else:
            hi = mid
    return best


def matched(value: float, target: float, tolerance: float = MATCH_TOLERANCE) -> bool:
    return abs(value - target) <= tolerance * target


def trained_rows(summary: dict, epochs: float, command: str) -> list[dict]:
    """``cifar_study.json`` rows of a training run's ``summary.json``: the dense teacher, the dense
    control (fine-tuned like the concrete stage, ``epochs`` more, without masks) and one row per p-logit."""
    rows = summary["rows"]
    dense = next(r for r in rows if r["method"] == "dense")
    control = next((r for r in rows if r["method"] == "dense_control"), None)
    if control is None:
        raise ValueError("the run has no dense control: train it with tools/train_imagenet.py ... --dense-control "
                         "(the other stages are reused)")
    out = []
    for r in rows:
        name = {"dense": "dense_teacher", "dense_control": "dense_control"}.get(r["method"], "sttabt_concrete")
        row = {"method": name, "extra_epochs": 0 if name == "dense_teacher" else epochs,
               "top1": r["hard_top1"], "gflops": r["gflops"], "relative_gflops": r["gflops"] / dense["gflops"],
               "keep_mean": r["keep_mean"], "command": command}
        if name == "sttabt_concrete":
            row.update(p_logit=r["p_logit"], keep_per_layer=r["keep_per_layer"],
                       vs_dense_teacher=r["hard_top1"] - dense["hard_top1"],
                       vs_dense_control=r["hard_top1"] - control["hard_top1"])
        out.append(row)
    return out
