"""One training stage: epochs of accumulated optimiser steps under DDP, with EMA, evaluation,
atomic checkpoints and exact resumption.

The stage's loss lives in a *task* module (``task(images, targets) -> (loss, metrics)``, see
:mod:`sttabt.train.tasks`); ``trained`` is the module whose parameters the optimiser and the EMA
follow. Steps are counted in optimiser updates; the learning rate follows timm's cosine schedule per
update.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from tqdm import tqdm

from .distributed import Dist
from .log import StageLog
from .state import Position, find_training_state, save_training_state, set_aside, set_rng_states

WARMUP_LR_INIT = 1e-6  # learning rate at the first warm-up step (timm's default)


@dataclass
class StageSpec:
    """How one stage optimises. ``lr_schedule`` is ``"cosine"`` (with warm-up) or ``"constant"``."""
    name: str
    folder: Path
    epochs: int
    lr: float
    weight_decay: float = 0.0
    warmup_epochs: int = 0
    min_lr: float = 0.0
    lr_schedule: str = "cosine"
    clip_grad: float | None = None
    ema_decay: float | None = None
    find_unused_parameters: bool = False
    mixup: Mixup | None = None
    fingerprint: dict = field(default_factory=dict)


@dataclass
class Loop:
    """The run-wide settings every stage shares."""
    dist: Dist
    accum_steps: int
    batch_size: int
    save_every: int = 0          # also checkpoint every this many optimiser steps (0: per epoch only)
    amp: bool = False
    tensorboard: bool = True
    progress: bool = True


def _autocast(loop: Loop):
    if loop.amp:  # bfloat16 autocast on whatever device the stage runs on
        return torch.autocast(loop.dist.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _mean_over_ranks(loop: Loop, metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    keys = sorted(metrics)
    total = loop.dist.all_sum(torch.stack([metrics[k].detach().float().cpu() for k in keys]))
    return {k: v / loop.dist.world for k, v in zip(keys, total.tolist())}


def fit(spec: StageSpec, loop: Loop, *, task: nn.Module, trained: nn.Module, loader,
        evaluate: Callable[[nn.Module, nn.Module | None], dict],
        pictures: Callable[[nn.Module], dict] | None = None) -> tuple[dict, nn.Module | None]:
    """Train ``spec.epochs`` epochs (resuming from ``spec.folder`` when it holds a checkpoint).

    Returns the final metrics with their per-epoch history, and the EMA copy of ``trained`` (None
    without EMA). ``evaluate(model, ema_model)`` runs on every rank at the end of each epoch (with
    ``ema_model`` None but in the last epoch) and returns metrics already reduced over processes.
    ``pictures(model) -> {tag: H x W x 3 uint8}`` runs after it on the rank that writes TensorBoard
    only (so it must not communicate), under a forked RNG: it cannot change what is trained."""
    d = loop.dist
    per_epoch = loader.sampler.steps
    total_steps = spec.epochs * per_epoch
    optimizer = create_optimizer_v2(trained, opt="adamw", lr=spec.lr, weight_decay=spec.weight_decay)
    scheduler = None
    if spec.lr_schedule == "cosine":
        scheduler = CosineLRScheduler(optimizer, t_initial=max(total_steps, 1), lr_min=spec.min_lr,
                                      warmup_t=spec.warmup_epochs * per_epoch, warmup_lr_init=WARMUP_LR_INIT,
                                      t_in_epochs=False)
    ema = ModelEmaV3(trained, decay=spec.ema_decay, use_warmup=True) if spec.ema_decay else None

    position, history = Position(), []
    found = find_training_state(spec.folder, spec.fingerprint)
    d.barrier()  # every rank has read before a damaged file is set aside
    for path, problem in found.damaged:
        if d.main:
            print(f"warning: [{spec.name}] {problem}; continuing from {found.path} instead (the damaged "
                  f"file is kept as {set_aside(path)})", flush=True)
    state = found.state
    if state is not None:
        trained.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
            scheduler.step_update(state["position"]["global_step"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        position, history = Position(**state["position"]), state["history"]
        set_rng_states(state["rng"])
        if d.main:
            print(f"[{spec.name}] resumed from {found.path}: epoch {position.epoch}, "
                  f"step {position.global_step}/{total_steps}")

    log = StageLog(spec.folder, enabled=d.main, resume_step=position.global_step, tensorboard=loop.tensorboard)
    net = task
    if d.enabled:
        net = DistributedDataParallel(task, device_ids=[d.device.index] if d.device.type == "cuda" else None,
                                      find_unused_parameters=spec.find_unused_parameters)

    def checkpoint(pos: Position) -> None:
        if d.main:
            save_training_state(spec.folder, position=pos, fingerprint=spec.fingerprint, history=history,
                                model=trained, optimizer=optimizer, scheduler=scheduler, ema=ema)
        d.barrier()

    bar = tqdm(total=total_steps, initial=position.global_step, desc=spec.name, dynamic_ncols=True,
               disable=not (d.main and loop.progress))
    for epoch in range(position.epoch, spec.epochs):
        first = position.step_in_epoch if epoch == position.epoch else 0
        loader.sampler.set_epoch(epoch, skip_steps=first)
        batches = iter(loader)
        task.train()
        start = time.perf_counter()
        for step in range(first, per_epoch):
            sums: dict[str, torch.Tensor] = {}
            for micro in range(loop.accum_steps):
                images, targets = next(batches)
                images, targets = images.to(d.device), targets.to(d.device)
                if spec.mixup is not None:
                    images, targets = spec.mixup(images, targets)
                last = micro == loop.accum_steps - 1
                sync = contextlib.nullcontext() if last or not d.enabled else net.no_sync()
                with sync:
                    with _autocast(loop):
                        loss, metrics = net(images, targets)
                    (loss / loop.accum_steps).backward()
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0) + v.detach() / loop.accum_steps
            if spec.clip_grad:
                torch.nn.utils.clip_grad_norm_(trained.parameters(), spec.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            position.global_step += 1
            if scheduler is not None:
                scheduler.step_update(position.global_step)
            if ema is not None:
                ema.update(trained, step=position.global_step)
            values = _mean_over_ranks(loop, sums)
            values["lr"] = optimizer.param_groups[0]["lr"]
            log.log("train", position.global_step, values)
            bar.update(1)
            bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}", epoch=epoch)
            if loop.save_every and position.global_step % loop.save_every == 0 and step + 1 < per_epoch:
                checkpoint(Position(epoch, step + 1, position.global_step))
        metrics = evaluate(trained, ema.module if ema is not None and epoch + 1 == spec.epochs else None)
        metrics = {"epoch": epoch + 1, "step": position.global_step,
                   "epoch_seconds": round(time.perf_counter() - start, 3), **metrics}
        history.append(metrics)
        log.log("val", position.global_step, {k: v for k, v in metrics.items() if not isinstance(v, list)})
        if pictures is not None and log.tensorboard:
            with torch.random.fork_rng(devices=[d.device] if d.device.type == "cuda" else []):
                log.images(position.global_step, pictures(trained))
        if d.main:
            bar.write(f"[{spec.name}] epoch {epoch + 1}/{spec.epochs} " + _brief(metrics))
        position = Position(epoch + 1, 0, position.global_step)
        checkpoint(position)
    bar.close()
    log.close()
    result = {"final": history[-1] if history else {}, "history": history, "steps": position.global_step}
    return result, (ema.module if ema is not None else None)


def _brief(metrics: dict) -> str:
    shown = [(k, v) for k, v in metrics.items() if isinstance(v, float) and k not in ("epoch_seconds",)]
    return " ".join(f"{k}={v:.4g}" for k, v in shown[:8])
