"""Measured speed of a finished sweep: each concrete model against the dense teacher, timed side by
side (alternately, median of the repeats; :mod:`sttabt.timing`) on the same validation images, so
the summary shows accuracy, GFLOPs and wall-clock time together.

The pruned executor (tokens really removed, the scout included) is timed against the dense host in
evaluation mode. Timings are taken on rank 0 only; they are noisy on a shared machine, which is why
they sit beside the FLOPs and never replace them.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..checkpoint import create_from_checkpoint, load_teacher
from ..timing import device_name, per_second, time_alternately
from . import augment, data

WARMUP = 2
REPEATS = 5


def speed_images(run, batch_size: int) -> torch.Tensor:
    """The first ``batch_size`` validation images, as the evaluation transform gives them."""
    loader = data.eval_loader(run.val, augment.eval_transform(run.args), batch_size=batch_size, world=1, rank=0,
                              workers=0)
    images, _ = next(iter(loader))
    return images.to(run.dist.device)


def measure(run, teacher: Path, models: dict[str, Path], *, warmup: int = WARMUP, repeats: int = REPEATS) -> dict:
    """``{"device", "batch_size", "dense_images_per_s", "rows": {name: {"images_per_s", "speedup"}}}``
    for every ``models`` checkpoint against the dense ``teacher`` weights."""
    dense = load_teacher(run.build(), teacher, reinit_scout=False).host.eval()
    pruned = {name: create_from_checkpoint(path).to(run.dist.device).eval() for name, path in models.items()}
    images = speed_images(run, run.args.batch_size)
    runs = {"dense": lambda: dense(images)}
    runs.update({name: (lambda m=m: m(images)) for name, m in pruned.items()})
    with torch.inference_mode():
        times = time_alternately(runs, device=run.dist.device, warmup=warmup, repeats=repeats)
    dense_rate = per_second(len(images), times["dense"])
    rows = {}
    for name in pruned:
        rate = per_second(len(images), times[name])
        rows[name] = {"images_per_s": rate, "speedup": rate / dense_rate}
    return {"device": device_name(run.dist.device), "batch_size": len(images), "repeats": repeats,
            "dense_images_per_s": dense_rate, "rows": rows}
