"""The STTABT pipeline as stage functions: dense teacher, scout distillation, concrete fine-tuning
per p-logit, its dense control (``--dense-control``), and the sweep summary.

Layout of a run, ``OUTPUT/<model>-f<factor>/``::

    teacher/                 model.pth (dense host weights), results.json      (only without --teacher-checkpoint)
    approx/                  scout.pth, results.json
    concrete/p_logit_<v>/    model.pth, model_ema.pth (STTABT checkpoints), results.json
    dense_control/           model.pth, model_ema.pth (dense host weights), results.json   (--dense-control)
    summary.json, summary.csv, args.yaml

and in every stage folder ``checkpoint.pth`` and ``checkpoint_prev.pth`` (the last two training states),
``log.jsonl`` and ``tb/`` (TensorBoard).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import timm
import torch

from ..approx import drop_distillation_keys
from ..checkpoint import CheckpointError, atomic_save, describe, load_strict, load_teacher, read_checkpoint, \
    save_checkpoint
from ..flops import vit_flops
from ..wrap import STTABT
from . import augment, data
from .distributed import Dist
from .evaluate import scout_quality, sttabt_metrics_with_ema, top1
from .loop import Loop, StageSpec, fit
from .pictures import token_pictures
from .state import RESULTS, read_results, seed_everything, write_json
from .tasks import Classification, ConcreteFineTuning, DenseFineTuning, Distillation

TEACHER_WEIGHTS = "model.pth"
SCOUT_WEIGHTS = "scout.pth"
# each stage starts from its own seed; the dense control shares the concrete stage's (same data order)
SEED_OFFSETS = {"teacher": 0, "approx": 1, "concrete": 2, "dense_control": 2}
HASH_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _what_it_made(fingerprint: dict) -> dict:
    """A stage's fingerprint as the identity of what it wrote: the number of processes is left out
    (it changes how the work is shared, not the result), as when finished stages are compared."""
    return {k: v for k, v in fingerprint.items() if k != "world"}


@dataclass
class Run:
    args: argparse.Namespace
    dist: Dist
    loop: Loop
    folder: Path
    train: data.Split
    val: data.Split

    @property
    def num_classes(self) -> int:
        return len(self.train.classes)

    def stage_folder(self, stage: str, p_logit: float | None = None) -> Path:
        if stage == "concrete":
            return self.folder / "concrete" / f"p_logit_{p_logit:g}"
        return self.folder / stage

    def build(self, p_logit: float = 0.0, threshold: float | None = None) -> STTABT:
        """The STTABT model of this run (random weights), on the run's device: a concrete pruner or,
        with ``--pruner ltp``, LTP's thresholds (``threshold``: the final token threshold)."""
        a = self.args
        kwargs = {**a.model_kwargs, "img_size": a.img_size, "num_classes": self.num_classes,
                  "factor": a.factor, "pruner": "concrete", "p_logit": p_logit, "drop_path_rate": a.drop_path}
        if getattr(a, "pruner", "concrete") == "ltp":
            kwargs.pop("p_logit")
            kwargs.update(pruner="ltp", threshold=a.thresholds[0] if threshold is None else threshold)
        return timm.create_model(a.model, **kwargs).to(self.dist.device)

    def loaders(self, stage: str):
        a, d = self.args, self.dist
        train = data.train_loader(self.train, augment.train_transform(a, stage), batch_size=a.batch_size,
                                  accum_steps=self.loop.accum_steps, seed=a.seed, world=d.world, rank=d.rank,
                                  workers=a.workers)
        val = data.eval_loader(self.val, augment.eval_transform(a), batch_size=a.batch_size, world=d.world,
                               rank=d.rank, workers=a.workers)
        return train, val

    def fingerprint(self, stage: str, **extra) -> dict:
        """Settings a stage's checkpoint must agree with to be resumed: what the run *is* (settings,
        the contents of given files), never where it lies, so a moved or copied run folder resumes."""
        a = self.args
        return {"stage": stage, "model": a.model, "model_kwargs": dict(a.model_kwargs), "img_size": a.img_size,
                "factor": a.factor, "dataset": a.dataset, "train_images": len(self.train), "world": self.dist.world,
                "batch_size": a.batch_size, "total_batch_size": a.total_batch_size, "seed": a.seed, **extra}

    @cached_property
    def teacher_identity(self) -> dict:
        """The given teacher file's checksum, or the settings of the teacher stage that trains it."""
        if self.args.teacher_checkpoint:
            return {"checkpoint_sha256": file_sha256(self.args.teacher_checkpoint)}
        return _what_it_made(self.teacher_fingerprint())

    def teacher_fingerprint(self) -> dict:
        return self.fingerprint("teacher", epochs=self.args.teacher_epochs, lr=self.args.teacher_lr)

    def approx_fingerprint(self) -> dict:
        return self.fingerprint("approx", teacher=self.teacher_identity, epochs=self.args.approx_epochs,
                                lr=self.args.approx_lr)

    @cached_property
    def scout_identity(self) -> dict:
        """The approx stage's settings; with ``--skip-approx`` those its results recorded (or the
        scout file's checksum)."""
        if not self.args.skip_approx:
            return _what_it_made(self.approx_fingerprint())
        folder = self.stage_folder("approx")
        recorded = (read_results(folder) or {}).get("fingerprint")
        return _what_it_made(recorded) if recorded else {"scout_sha256": file_sha256(folder / SCOUT_WEIGHTS)}

    def concrete_fingerprint(self, p_logit: float) -> dict:
        a = self.args
        return self.fingerprint("concrete", teacher=self.teacher_identity, scout=self.scout_identity,
                                p_logit=p_logit, epochs=a.epochs, lr=a.lr)

    def dense_control_fingerprint(self) -> dict:
        a = self.args
        return self.fingerprint("dense_control", teacher=self.teacher_identity, epochs=a.epochs, lr=a.lr,
                                kd_weight=a.kd_weight)

    def skipped_images(self) -> dict:
        return {"train": len(self.train.skipped), "val": len(self.val.skipped)}


def finished(run: Run, folder: Path, fingerprint: dict) -> dict | None:
    """The results of a stage finished earlier with the same settings (``--auto-resume`` only)."""
    results = read_results(folder) if run.args.auto_resume else None
    theirs = (results or {}).get("fingerprint")
    if theirs is not None:
        changed = sorted(k for k in set(theirs) | set(fingerprint)
                         if k != "world" and theirs.get(k) != fingerprint.get(k))
        if changed:
            raise ValueError(f"{folder} finished with other settings ({', '.join(changed)}); choose another "
                             "--output, or remove that folder to train it again (nothing was changed)")
    return results


def _finish(run: Run, folder: Path, results: dict, fingerprint: dict | None = None) -> dict:
    results = {**results, "skipped_images": run.skipped_images()}
    if fingerprint is not None:
        results = {**results, "fingerprint": fingerprint}
    if run.dist.main:
        write_json(folder / RESULTS, results)
    run.dist.barrier()
    return results


def _dense_evaluation(run: Run, val):
    """Top-1 of a dense host (and of its EMA) on the validation loader ``val``."""
    def evaluate(model, ema):
        metrics = {"top1": top1(model, val, run.dist)}
        if ema is not None:
            metrics["ema_top1"] = top1(ema, val, run.dist)
        return metrics
    return evaluate


# --------------------------------------------------------------------------------------------------
# stage 0: the dense teacher
# --------------------------------------------------------------------------------------------------
def teacher_stage(run: Run) -> tuple[Path, dict]:
    """Dense teacher weights: ``--teacher-checkpoint``, or a host trained here for ``--teacher-epochs``."""
    a, folder = run.args, run.stage_folder("teacher")
    if a.teacher_checkpoint:
        return Path(a.teacher_checkpoint), _given_teacher(run, folder)
    fingerprint = run.teacher_fingerprint()
    results = finished(run, folder, fingerprint)
    if results is not None:
        print_main(run, f"[teacher] finished earlier: top-1 {results['top1']:.2f} ({folder / RESULTS})")
        return folder / TEACHER_WEIGHTS, results
    seed_everything(a.seed + SEED_OFFSETS["teacher"])
    host = run.build().host
    train, val = run.loaders("teacher")
    spec = StageSpec("teacher", folder, a.teacher_epochs, a.teacher_lr, a.teacher_weight_decay,
                     warmup_epochs=min(a.teacher_warmup_epochs, a.teacher_epochs), min_lr=a.min_lr,
                     ema_decay=a.model_ema_decay or None, mixup=augment.mixup(a, run.num_classes),
                     fingerprint=fingerprint)

    result, _ = fit(spec, run.loop, task=Classification(host, a.smoothing), trained=host, loader=train,
                    evaluate=_dense_evaluation(run, val))
    if run.dist.main:
        atomic_save({"model": host.state_dict()}, folder / TEACHER_WEIGHTS)
    return folder / TEACHER_WEIGHTS, _finish(run, folder, {
        "stage": "teacher", **result["final"], "gflops": vit_flops(host).gflops, "history": result["history"]},
        fingerprint)


def _given_teacher(run: Run, folder: Path) -> dict:
    """A given teacher is evaluated once (its top-1 is the summary's dense row)."""
    results = read_results(folder)
    if results is not None and results.get("checkpoint_sha256") == run.teacher_identity["checkpoint_sha256"]:
        return results
    model = run.build()
    load_teacher(model, run.args.teacher_checkpoint, reinit_scout=False)
    _, val = run.loaders("teacher")
    return _finish(run, folder, {"stage": "teacher", "checkpoint": str(run.args.teacher_checkpoint),
                                 **run.teacher_identity, "top1": top1(model.host, val, run.dist),
                                 "gflops": vit_flops(model.host).gflops})


# --------------------------------------------------------------------------------------------------
# stage 1: the approximation network
# --------------------------------------------------------------------------------------------------
def approx_stage(run: Run, teacher: Path) -> Path:
    """Distil the scout from the frozen teacher (section 3.1), starting from interpolated init."""
    a, folder = run.args, run.stage_folder("approx")
    weights = folder / SCOUT_WEIGHTS
    if a.skip_approx:
        print_main(run, f"[approx] --skip-approx: reusing {weights}")
        return weights
    fingerprint = run.approx_fingerprint()
    results = finished(run, folder, fingerprint)
    if results is not None:
        print_main(run, f"[approx] finished earlier: attention KL {results['attention_kl']:.4f}")
        return weights
    seed_everything(a.seed + SEED_OFFSETS["approx"])
    model = run.build()
    load_teacher(model, teacher)  # and re-initialise the scout from it by interpolation
    train, val = run.loaders("approx")
    spec = StageSpec("approx", folder, a.approx_epochs, a.approx_lr, lr_schedule="constant",
                     clip_grad=a.approx_clip_grad,
                     fingerprint=fingerprint)
    task = Distillation(model.host, model.scout)  # task.student: the scout and its distillation-only parts
    before = scout_quality(model.host, task.student, val, run.dist)
    result, _ = fit(spec, run.loop, task=task, trained=task.student, loader=train,
                    evaluate=lambda scout, _: scout_quality(model.host, scout, val, run.dist))
    if run.dist.main:
        atomic_save({"scout": model.scout.state_dict(), "factor": a.factor}, weights)
    final = result["final"] or before
    _finish(run, folder, {"stage": "approx", **final, "interpolated_init": before, "history": result["history"]},
            fingerprint)
    return weights


def load_scout(model: STTABT, path: Path) -> None:
    state = read_checkpoint(path, what="approximation network (scout.pth, written by the approx stage)")
    if not isinstance(state.get("scout"), dict):
        raise CheckpointError(f"{path} is not a scout file written by the approx stage (it looks like "
                              f"{describe(state)})")
    scout = drop_distillation_keys(state["scout"], model.scout)  # files from before the scout split
    load_strict(model.scout, scout, f"scout (factor {model.scout.factor})", str(path))


# --------------------------------------------------------------------------------------------------
# stage 2: concrete fine-tuning, one model per p-logit
# --------------------------------------------------------------------------------------------------
def concrete_stage(run: Run, teacher: Path, scout: Path, p_logit: float) -> dict:
    a, folder = run.args, run.stage_folder("concrete", p_logit)
    name = f"concrete p_logit={p_logit:g}"
    fingerprint = run.concrete_fingerprint(p_logit)
    results = finished(run, folder, fingerprint)
    if results is not None:
        print_main(run, f"[{name}] finished earlier: hard top-1 {results['hard_top1']:.2f}")
        return results
    seed_everything(a.seed + SEED_OFFSETS["concrete"])
    model = run.build(p_logit)
    load_teacher(model, teacher, reinit_scout=False)
    load_scout(model, scout)
    dense = copy.deepcopy(model.host)
    train, val = run.loaders("concrete")
    spec = StageSpec(name, folder, a.epochs, a.lr, a.weight_decay, warmup_epochs=a.warmup_epochs, min_lr=a.min_lr,
                     ema_decay=a.model_ema_decay or None, mixup=augment.mixup(a, run.num_classes),
                     fingerprint=fingerprint)

    def evaluate(m, ema):
        metrics = sttabt_metrics_with_ema(m, ema, val, run.dist)
        metrics["p_logits"] = [round(v, 4) for v in m.pruner.p_logits.tolist()]
        return metrics

    # only where TensorBoard is written (rank 0): reading the images costs the other ranks nothing
    pictures = token_pictures(run.val, augment.eval_transform(a), run.dist.device) \
        if run.dist.main and run.loop.tensorboard else None
    task = ConcreteFineTuning(model, dense, smoothing=a.smoothing, kd_weight=a.kd_weight)
    result, ema = fit(spec, run.loop, task=task, trained=model, loader=train, evaluate=evaluate,
                      pictures=pictures)
    final = result["final"] or evaluate(model, None)
    if run.dist.main:
        save_checkpoint(model, folder / "model.pth", p_logit=p_logit)
        if ema is not None:
            save_checkpoint(ema, folder / "model_ema.pth", p_logit=p_logit)
    return _finish(run, folder, {"stage": "concrete", "p_logit": p_logit, "target_keep": 1 / (1 + math.exp(-p_logit)),
                                 **final, "history": result["history"]}, fingerprint)


# --------------------------------------------------------------------------------------------------
# stage 2b: the dense control (--dense-control)
# --------------------------------------------------------------------------------------------------
def dense_control_stage(run: Run, teacher: Path) -> dict:
    """The dense teacher fine-tuned like the concrete stage (same epochs, schedule, lr, weight decay,
    EMA, augmentation, seed and KD from the frozen teacher with the same weight) but without masks,
    so that the only difference from a concrete row is the masks."""
    a, folder = run.args, run.stage_folder("dense_control")
    fingerprint = run.dense_control_fingerprint()
    results = finished(run, folder, fingerprint)
    if results is not None:
        print_main(run, f"[dense control] finished earlier: top-1 {results['top1']:.2f}")
        return results
    seed_everything(a.seed + SEED_OFFSETS["dense_control"])
    model = run.build()
    load_teacher(model, teacher, reinit_scout=False)
    host = model.host
    frozen = copy.deepcopy(host)
    train, val = run.loaders("concrete")
    spec = StageSpec("dense control", folder, a.epochs, a.lr, a.weight_decay, warmup_epochs=a.warmup_epochs,
                     min_lr=a.min_lr, ema_decay=a.model_ema_decay or None, mixup=augment.mixup(a, run.num_classes),
                     fingerprint=fingerprint)

    evaluate = _dense_evaluation(run, val)
    task = DenseFineTuning(host, frozen, smoothing=a.smoothing, kd_weight=a.kd_weight)
    result, ema = fit(spec, run.loop, task=task, trained=host, loader=train, evaluate=evaluate)
    final = result["final"] or evaluate(host, None)
    if run.dist.main:
        atomic_save({"model": host.state_dict()}, folder / TEACHER_WEIGHTS)
        if ema is not None:
            atomic_save({"model": ema.state_dict()}, folder / "model_ema.pth")
    return _finish(run, folder, {"stage": "dense_control", **final, "gflops": vit_flops(host).gflops,
                                 "history": result["history"]}, fingerprint)


def print_main(run: Run, text: str) -> None:
    if run.dist.main:
        print(text, flush=True)
