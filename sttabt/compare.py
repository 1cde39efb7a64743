"""Training-free pruners side by side: one host and scout, the same keep budgets, the same images.

:func:`variants` puts every (pruner, keep) pair on the one host and scout; :func:`evaluate` runs
them and the dense host batch by batch (top-1 on the pruned executor with hard masks, kept share and
GFLOPs of each image's own plan); :func:`time_variants` times each variant alternately with the
dense host; :func:`table` turns the totals into rows, dense first.

GFLOPs follow :func:`sttabt.flops.sttabt_flops`: the pruned host plus the pass the pruner reads its
attention from. For ``abt`` / ``manual`` / ``evit_scout`` that is the scout; the online ``evit`` reads
the host's own attention during its pass and has none; for the oracle ``abt_oracle``
it is the host's own dense pass up to the last layer's attention, so the oracle's planning costs
about as much as the dense model and its total is above the dense GFLOPs: it measures how good the
scout's attention is, it is not a way to save compute. Rows name the planning pass and its GFLOPs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from .flops import GIGA, sttabt_flops, vit_flops
from .pruners import create_pruner
from .pruners.masks import check_keep
from .timing import per_second, time_alternately
from .wrap import STTABT

TRAINING_FREE = ("abt", "abt_oracle", "manual", "evit_scout", "evit")
DENSE = "dense"
PERCENT = 100.0


@dataclass
class Variant:
    pruner: str
    keep: float | None  # None for a pruner without one keep ratio (a checkpoint's trained concrete pruner)
    model: STTABT


@dataclass
class Tally:
    """Running totals over batches of one variant (or of the dense host)."""

    images: int = 0
    correct: int = 0
    flops: dict = field(default_factory=dict)  # sums over images of sttabt_flops(...).to_dict() values

    def add(self, logits: torch.Tensor, labels: torch.Tensor, report: dict | None = None) -> None:
        batch = labels.shape[0]
        self.images += batch
        self.correct += int((logits.argmax(-1) == labels).sum())
        for key, value in (report or {}).items():
            value = torch.as_tensor(value, dtype=torch.float64) * batch
            self.flops[key] = self.flops[key] + value if key in self.flops else value

    def mean(self, key: str):
        return (self.flops[key] / self.images).tolist()


def check_pruners(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in TRAINING_FREE]
    if unknown:
        raise ValueError(f"unknown pruner {unknown[0]!r}: choose from {', '.join(TRAINING_FREE)} "
                         "(the training-free ones; 'concrete' is trained and has no keep ratio)")
    return list(dict.fromkeys(names))


def variants(base: STTABT, pruners: Sequence[str], keeps: Sequence[float]) -> list[Variant]:
    """One STTABT model per (pruner, keep), all sharing ``base``'s host and scout (no copies)."""
    keeps = [check_keep(k) for k in keeps]
    return [Variant(name, keep, STTABT(base.host, base.scout, create_pruner(name, base.depth, keep=keep)).eval())
            for name in check_pruners(pruners) for keep in keeps]


def planning_pass(model: STTABT) -> str:
    """What the pruner reads its attention from (counted in its GFLOPs)."""
    if model.online:
        return "none (online: the host's own attention)"
    if model.pruner.source == "actual":
        return "dense host pass (oracle)"
    return f"scout (factor {model.scout.factor})"


def planning_gflops(model: STTABT) -> float:
    """GFLOPs per image of that pass: the scout, or for the oracle the host itself, dense, up to the
    last layer's attention scores (what :meth:`STTABT.plan` runs); 0 for an online pruner."""
    if model.online:
        return 0.0
    reader = model.host if model.pruner.source == "actual" else model.scout.net
    return vit_flops(reader, head=False, last_mlp=False, last_attn_scores_only=True).total / GIGA


def evaluate(base: STTABT, runs: Sequence[Variant], batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
             *, step: Callable[[], None] = lambda: None) -> tuple[Tally, list[Tally]]:
    """Top-1, kept share and GFLOPs of the dense host and of every variant, one pass over ``batches``
    of (images, labels) on the model's device; ``step`` is called after each batch."""
    dense, tallies = Tally(), [Tally() for _ in runs]
    with torch.inference_mode():
        for images, labels in batches:
            dense.add(base.host(images), labels)
            for run, tally in zip(runs, tallies):
                out = run.model.forward_detailed(images, hard=True, executor="pruned")
                tally.add(out.logits, labels, sttabt_flops(run.model, out.masks).to_dict())
            step()
    return dense, tallies


def time_variants(base: STTABT, runs: Sequence[Variant], images: torch.Tensor, *, warmup: int, repeats: int,
                  step: Callable[[], None] = lambda: None) -> list[dict[str, list[float]]]:
    """Seconds per call on ``images`` of the dense host and of each variant, each variant timed
    alternately with the dense host (see :mod:`sttabt.timing`): one ``{"dense": [...], "pruned": [...]}``
    per variant."""
    timings = []
    with torch.inference_mode():
        for run in runs:
            calls = {DENSE: lambda: base.host(images), "pruned": lambda: run.model(images)}
            timings.append(time_alternately(calls, device=images.device, warmup=warmup, repeats=repeats))
            step()
    return timings


def table(base: STTABT, runs: Sequence[Variant], dense: Tally, tallies: Sequence[Tally],
          timings: Sequence[dict[str, list[float]]], batch: int) -> list[dict]:
    """Result rows, dense first; ``timings`` from :func:`time_variants`, ``batch`` images per timed
    call. The dense row's images/s is the median of every dense timing of the run."""
    dense_gflops = vit_flops(base.host).gflops
    dense_img_s = per_second(batch, [t for times in timings for t in times[DENSE]])
    rows = [{
        "pruner": DENSE, "keep": 1.0, "budget": None, "top1": PERCENT * dense.correct / dense.images,
        "correct": dense.correct, "images": dense.images, "keep_mean": 1.0, "gflops": dense_gflops,
        "host_gflops": dense_gflops, "planning_gflops": 0.0, "planning_pass": None,
        "relative_flops": 1.0, "ideal_speedup": 1.0, "dense_img_s": dense_img_s, "pruned_img_s": dense_img_s,
        "speedup": 1.0, "keep_per_layer": [1.0] * base.depth,
    }]
    for run, tally, times in zip(runs, tallies, timings):
        host, planning = tally.mean("host_gflops"), planning_gflops(run.model)
        gflops = host + planning
        row_dense, row_pruned = per_second(batch, times[DENSE]), per_second(batch, times["pruned"])
        rows.append({
            "pruner": run.pruner, "keep": run.keep, "budget": run.model.budget or run.model.pruner.default_budget,
            "top1": PERCENT * tally.correct / tally.images, "correct": tally.correct, "images": tally.images,
            "keep_mean": tally.mean("keep_mean"), "gflops": gflops, "host_gflops": host,
            "planning_gflops": planning, "planning_pass": planning_pass(run.model),
            "relative_flops": gflops / dense_gflops, "ideal_speedup": dense_gflops / gflops,
            "dense_img_s": row_dense, "pruned_img_s": row_pruned, "speedup": row_pruned / row_dense,
            "keep_per_layer": tally.mean("keep_per_layer"),
        })
    return rows
