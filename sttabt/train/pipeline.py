"""The whole pipeline: every check of the input before any work starts (:func:`check_inputs`), then
the stages in order (:func:`train_stages`). Nothing is written before the checks have passed."""
from __future__ import annotations

from pathlib import Path

import timm
import yaml

from ..checkpoint import atomic_write, load_teacher
from .stages import SCOUT_WEIGHTS, TEACHER_WEIGHTS, Run, approx_stage, concrete_stage, dense_control_stage, finished, \
    load_scout, teacher_stage
from .ltp import ltp_folder, ltp_stage, ltp_stages
from .state import CANDIDATES, RESULTS, find_training_state, read_results
from .speed import measure
from .summary import write_summary

ARGS_FILE = "args.yaml"


def _stages(run: Run) -> list[tuple[Path, dict]]:
    """(folder, fingerprint) of every stage this run trains."""
    a = run.args
    stages = [] if a.teacher_checkpoint else [(run.stage_folder("teacher"), run.teacher_fingerprint())]
    if a.pruner == "ltp":  # no scout: LTP reads the host's own attention
        return stages + ltp_stages(run)
    if not a.skip_approx:
        stages.append((run.stage_folder("approx"), run.approx_fingerprint()))
    stages += [(run.stage_folder("concrete", v), run.concrete_fingerprint(v)) for v in a.p_logits]
    if a.dense_control:
        stages.append((run.stage_folder("dense_control"), run.dense_control_fingerprint()))
    return stages


def _build(run: Run):
    a = run.args
    try:
        return run.build()
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f"--model {a.model} with --model-kwargs {a.model_kwargs or '{}'}, --factor {a.factor} "
                         f"and --img-size {a.img_size} does not make a model: {detail}") from None


def _check_resumable(run: Run, model) -> None:
    """Every stage folder ``--auto-resume`` will read: results, checkpoints and weights, all read now."""
    a = run.args
    for folder, fingerprint in _stages(run):
        if finished(run, folder, fingerprint) is None:
            find_training_state(folder, fingerprint)
    if a.teacher_checkpoint:
        read_results(run.stage_folder("teacher"))
    elif read_results(run.stage_folder("teacher")) is not None:
        load_teacher(model, run.stage_folder("teacher") / TEACHER_WEIGHTS, reinit_scout=False)
    approx = run.stage_folder("approx")
    if a.pruner != "ltp" and not a.skip_approx and read_results(approx) is not None:
        load_scout(model, approx / SCOUT_WEIGHTS)


def check_inputs(run: Run) -> None:
    """Everything that can be wrong with the input, before any work starts (``ValueError``)."""
    a = run.args
    if a.model not in timm.list_models("sttabt_*"):
        raise ValueError(f"unknown model {a.model!r}; registered: {', '.join(timm.list_models('sttabt_*'))}")
    model = _build(run)
    if a.teacher_checkpoint:
        load_teacher(model, a.teacher_checkpoint, reinit_scout=False)
    scout = run.stage_folder("approx") / SCOUT_WEIGHTS
    if a.skip_approx and a.pruner != "ltp":
        if not scout.is_file():
            raise ValueError(f"--skip-approx: no approximation network at {scout}; run without --skip-approx "
                             "first (or point --output at the run that has it)")
        load_scout(model, scout)
    if a.auto_resume:
        _check_resumable(run, model)
        return
    taken = [str(f) for f, _ in _stages(run) if any((f / n).exists() for n in (*CANDIDATES, RESULTS))]
    if taken:
        raise ValueError(f"{', '.join(taken)} already hold{'s' if len(taken) == 1 else ''} a run; pass "
                         "--auto-resume to continue it, or choose another --output (nothing was changed)")


def write_args(run: Run) -> None:
    if run.dist.main:
        text = yaml.safe_dump({k: v for k, v in vars(run.args).items()}, sort_keys=True)
        atomic_write(run.folder / ARGS_FILE, lambda f: f.write(text), mode="w")
    run.dist.barrier()


def train_stages(run: Run) -> dict:
    """The stages in order, after :func:`check_inputs`; returns the summary."""
    write_args(run)
    teacher, dense = teacher_stage(run)
    if run.args.pruner == "ltp":
        rows = [ltp_stage(run, teacher, v) for v in run.args.thresholds]
        speed = None
        if run.args.speed and run.dist.main:
            speed = measure(run, teacher, {v: ltp_folder(run, v, "hard") / "model.pth" for v in run.args.thresholds})
        run.dist.barrier()
        return write_summary(run.folder, dense, rows, {}, main=run.dist.main, speed=speed)
    scout = approx_stage(run, teacher)
    rows = [concrete_stage(run, teacher, scout, v) for v in run.args.p_logits]
    control = dense_control_stage(run, teacher) if run.args.dense_control else None
    approx = read_results(run.stage_folder("approx")) or {}
    speed = None
    if run.args.speed and run.dist.main:
        speed = measure(run, teacher, {v: run.stage_folder("concrete", v) / "model.pth" for v in run.args.p_logits})
    run.dist.barrier()
    return write_summary(run.folder, dense, rows, approx, main=run.dist.main, control=control, speed=speed)


def run_pipeline(run: Run) -> dict:
    check_inputs(run)
    return train_stages(run)
