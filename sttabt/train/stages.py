"""The STTABT pipeline as stage functions: dense teacher, scout distillation, concrete fine-tuning
per p-logit, and the sweep summary.

Layout of a run, ``OUTPUT/<model>-f<factor>/``::

    teacher/                 model.pth (dense host weights), results.json      (only without --teacher-checkpoint)
    approx/                  scout.pth, results.json
    concrete/p_logit_<v>/    model.pth, model_ema.pth (STTABT checkpoints), results.json
    summary.json, summary.csv, args.yaml

and in every stage folder ``checkpoint.pth`` (training state), ``log.jsonl`` and ``tb/`` (TensorBoard).
"""
from __future__ import annotations

import argparse
import copy
import math
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
import yaml

from ..approx import drop_distillation_keys
from ..checkpoint import atomic_save, load_strict, load_teacher, read_checkpoint, save_checkpoint
from ..flops import vit_flops
from ..wrap import STTABT
from . import augment, data
from .distributed import Dist
from .evaluate import scout_quality, sttabt_metrics, top1
from .loop import Loop, StageSpec, fit
from .pictures import token_pictures
from .state import CHECKPOINT, RESULTS, read_results, seed_everything, write_json
from .summary import write_summary
from .tasks import Classification, ConcreteFineTuning, Distillation

TEACHER_WEIGHTS = "model.pth"
SCOUT_WEIGHTS = "scout.pth"
SEED_OFFSETS = {"teacher": 0, "approx": 1, "concrete": 2}  # each stage starts from its own seed


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

    def build(self, p_logit: float = 0.0) -> STTABT:
        """The STTABT model of this run (random weights), on the run's device."""
        a = self.args
        kwargs = {**a.model_kwargs, "img_size": a.img_size, "num_classes": self.num_classes,
                  "factor": a.factor, "pruner": "concrete", "p_logit": p_logit, "drop_path_rate": a.drop_path}
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
        """Settings a stage's checkpoint must agree with to be resumed."""
        a = self.args
        return {"stage": stage, "model": a.model, "model_kwargs": dict(a.model_kwargs), "img_size": a.img_size,
                "factor": a.factor, "dataset": a.dataset, "train_images": len(self.train), "world": self.dist.world,
                "batch_size": a.batch_size, "total_batch_size": a.total_batch_size, "seed": a.seed, **extra}


def _done(run: Run, folder: Path, fingerprint: dict) -> dict | None:
    """The results of a stage finished earlier with the same settings (``--auto-resume`` only)."""
    results = read_results(folder) if run.args.auto_resume else None
    theirs = (results or {}).get("fingerprint")
    if theirs is not None:
        changed = sorted(k for k in set(theirs) | set(fingerprint)
                         if k != "world" and theirs.get(k) != fingerprint.get(k))
        if changed:
            raise ValueError(f"{folder} finished with other settings ({', '.join(changed)}); choose another "
                             "--output, or remove that folder to train it again")
    return results


def _finish(run: Run, folder: Path, results: dict, fingerprint: dict | None = None) -> dict:
    if fingerprint is not None:
        results = {**results, "fingerprint": fingerprint}
    if run.dist.main:
        write_json(folder / RESULTS, results)
    run.dist.barrier()
    return results


# --------------------------------------------------------------------------------------------------
# stage 0: the dense teacher
# --------------------------------------------------------------------------------------------------
def teacher_stage(run: Run) -> tuple[Path, dict]:
    """Dense teacher weights: ``--teacher-checkpoint``, or a host trained here for ``--teacher-epochs``."""
    a, folder = run.args, run.stage_folder("teacher")
    if a.teacher_checkpoint:
        return Path(a.teacher_checkpoint), _given_teacher(run, folder)
    fingerprint = run.fingerprint("teacher", epochs=a.teacher_epochs, lr=a.teacher_lr)
    results = _done(run, folder, fingerprint)
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

    def evaluate(model, ema):
        metrics = {"top1": top1(model, val, run.dist)}
        if ema is not None:
            metrics["ema_top1"] = top1(ema, val, run.dist)
        return metrics

    result, _ = fit(spec, run.loop, task=Classification(host, a.smoothing), trained=host, loader=train,
                    evaluate=evaluate)
    if run.dist.main:
        atomic_save({"model": host.state_dict()}, folder / TEACHER_WEIGHTS)
    return folder / TEACHER_WEIGHTS, _finish(run, folder, {
        "stage": "teacher", **result["final"], "gflops": vit_flops(host).gflops, "history": result["history"]},
        fingerprint)


def _given_teacher(run: Run, folder: Path) -> dict:
    """A given teacher is evaluated once (its top-1 is the summary's dense row)."""
    results = read_results(folder)
    if results is not None and results.get("checkpoint") == str(run.args.teacher_checkpoint):
        return results
    model = run.build()
    load_teacher(model, run.args.teacher_checkpoint, reinit_scout=False)
    _, val = run.loaders("teacher")
    return _finish(run, folder, {"stage": "teacher", "checkpoint": str(run.args.teacher_checkpoint),
                                 "top1": top1(model.host, val, run.dist), "gflops": vit_flops(model.host).gflops})


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
    fingerprint = run.fingerprint("approx", teacher=str(teacher), epochs=a.approx_epochs, lr=a.approx_lr)
    results = _done(run, folder, fingerprint)
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
    state = read_checkpoint(path)
    if "scout" not in state:
        raise ValueError(f"{path} is not a scout file written by the approx stage")
    scout = drop_distillation_keys(state["scout"], model.scout)  # files from before the scout split
    load_strict(model.scout, scout, f"scout (factor {model.scout.factor})")


# --------------------------------------------------------------------------------------------------
# stage 2: concrete fine-tuning, one model per p-logit
# --------------------------------------------------------------------------------------------------
def concrete_stage(run: Run, teacher: Path, scout: Path, p_logit: float) -> dict:
    a, folder = run.args, run.stage_folder("concrete", p_logit)
    name = f"concrete p_logit={p_logit:g}"
    fingerprint = run.fingerprint("concrete", teacher=str(teacher), p_logit=p_logit, epochs=a.epochs, lr=a.lr)
    results = _done(run, folder, fingerprint)
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
        metrics = sttabt_metrics(m, val, run.dist)
        if ema is not None:
            metrics.update({f"ema_{k}": v for k, v in sttabt_metrics(ema, val, run.dist).items()
                            if k in ("hard_top1", "soft_top1", "keep_mean", "gflops")})
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


def print_main(run: Run, text: str) -> None:
    if run.dist.main:
        print(text, flush=True)


# --------------------------------------------------------------------------------------------------
# the whole pipeline
# --------------------------------------------------------------------------------------------------
def check_inputs(run: Run) -> None:
    """Everything that can be wrong with the input, before any work starts (``ValueError``)."""
    a = run.args
    if a.model not in timm.list_models("sttabt_*"):
        raise ValueError(f"unknown model {a.model!r}; registered: {', '.join(timm.list_models('sttabt_*'))}")
    model = run.build()
    if a.teacher_checkpoint:
        load_teacher(model, a.teacher_checkpoint, reinit_scout=False)
    scout = run.stage_folder("approx") / SCOUT_WEIGHTS
    if a.skip_approx:
        if not scout.is_file():
            raise ValueError(f"--skip-approx: no approximation network at {scout}; run without --skip-approx "
                             "first (or point --output at the run that has it)")
        load_scout(model, scout)
    if not a.auto_resume:
        stages = ([] if a.teacher_checkpoint else [run.stage_folder("teacher")]) \
            + ([] if a.skip_approx else [run.stage_folder("approx")]) \
            + [run.stage_folder("concrete", v) for v in a.p_logits]
        taken = [str(f) for f in stages if (f / CHECKPOINT).exists() or (f / RESULTS).exists()]
        if taken:
            raise ValueError(f"{', '.join(taken)} already hold{'s' if len(taken) == 1 else ''} a run; pass "
                             "--auto-resume to continue it, or choose another --output (nothing was changed)")


def run_pipeline(run: Run) -> dict:
    check_inputs(run)
    a = run.args
    if run.dist.main:
        run.folder.mkdir(parents=True, exist_ok=True)
        (run.folder / "args.yaml").write_text(yaml.safe_dump({k: v for k, v in vars(a).items()}, sort_keys=True))
    teacher, dense = teacher_stage(run)
    scout = approx_stage(run, teacher)
    rows = [concrete_stage(run, teacher, scout, v) for v in a.p_logits]
    approx = read_results(run.stage_folder("approx")) or {}
    return write_summary(run.folder, dense, rows, approx, main=run.dist.main)
