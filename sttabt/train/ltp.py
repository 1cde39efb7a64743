"""LTP on images (``--pruner ltp``): after the dense teacher, per final token threshold two stages.

Layout of a run, ``OUTPUT/<model>-f<factor>/``::

    teacher/                        (only without --teacher-checkpoint, as for concrete runs)
    ltp/threshold_<v>/soft/         model.pth, model_ema.pth, results.json
    ltp/threshold_<v>/hard/         model.pth, model_ema.pth, results.json   (the row of the summary)

* soft stage (``--epochs``, ``--lr``): ``sigmoid((score - threshold) / T)`` (``--ltp-temperature``)
  multiplies every layer's output; loss = CE + ``--ltp-lambda`` * sum_l mean(mask_l) + KD from the
  frozen teacher. The thresholds' deltas learn with the host (AdamW, no weight decay, the model's
  learning rate: the reference's own optimiser for them defaults to that rate too).
* hard stage (``--hard-epochs``, ``--hard-lr``): thresholds frozen, binary masks (dropped tokens stop
  being keys), CE + KD; it starts from the soft stage's model.

No scout is trained: LTP reads the host's own attention.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch

from ..checkpoint import load_checkpoint, load_teacher, save_checkpoint
from . import augment
from .evaluate import sttabt_metrics_with_ema
from .loop import StageSpec, fit
from .state import seed_everything
from .tasks import _FrozenTeacher, logit_kd, soft_target_loss

PHASES = ("soft", "hard")
SEED_OFFSET = 2  # as the concrete stage: the same data order


class LTPTraining(_FrozenTeacher):
    """One LTP stage: soft masks (``hard=False``: CE + regulariser + KD) or hard masks (CE + KD)."""

    def __init__(self, model, teacher, *, hard: bool, smoothing: float = 0.0, kd_weight: float = 0.5):
        super().__init__(teacher)
        self.model, self.hard, self.smoothing, self.kd_weight = model, hard, smoothing, kd_weight

    def forward(self, images, targets):
        out = self.model.forward_detailed(images, hard=self.hard, executor="masked")
        ce = soft_target_loss(out.logits, targets, self.smoothing)
        with torch.no_grad():
            teacher = self.teacher(images)
        kd = logit_kd(out.logits, teacher)
        loss = ce + self.kd_weight * kd
        values = {"ce": ce, "kd": kd, "keep": out.masks[:-1].detach().mean()}
        if not self.hard:
            regulariser = self.model.pruner.regulariser(out.masks, self.model.layout)
            loss = loss + regulariser
            values["regulariser"] = regulariser
        return loss, {"loss": loss, **values}


def ltp_folder(run, threshold: float, phase: str) -> Path:
    return run.folder / "ltp" / f"threshold_{threshold:g}" / phase


def ltp_fingerprint(run, threshold: float, phase: str) -> dict:
    a = run.args
    epochs, lr = (a.epochs, a.lr) if phase == "soft" else (a.hard_epochs, a.hard_lr)
    return run.fingerprint(f"ltp_{phase}", teacher=run.teacher_identity, threshold=threshold, epochs=epochs,
                           lr=lr, temperature=a.ltp_temperature, keep_lambda=a.ltp_lambda)


def _phase(run, teacher: Path, threshold: float, phase: str, start: Path | None) -> dict:
    from .stages import _finish, finished, print_main  # stages imports this module's users

    a, folder = run.args, ltp_folder(run, threshold, phase)
    name = f"ltp threshold={threshold:g} {phase}"
    fingerprint = ltp_fingerprint(run, threshold, phase)
    results = finished(run, folder, fingerprint)
    if results is not None:
        print_main(run, f"[{name}] finished earlier: hard top-1 {results['hard_top1']:.2f}")
        return results
    seed_everything(a.seed + SEED_OFFSET)
    model = run.build(threshold=threshold)
    load_teacher(model, teacher, reinit_scout=False)
    dense = copy.deepcopy(model.host)
    if start is not None:  # the hard stage goes on from the soft stage's model
        load_checkpoint(model, start)
    model.pruner.temperature, model.pruner.keep_lambda = a.ltp_temperature, a.ltp_lambda
    hard = phase == "hard"
    if hard:
        model.pruner.threshold_delta.requires_grad_(False)  # thresholds frozen in the hard stage
    epochs, lr = (a.hard_epochs, a.hard_lr) if hard else (a.epochs, a.lr)
    train, val = run.loaders("concrete")
    spec = StageSpec(name, folder, epochs, lr, a.weight_decay, warmup_epochs=0 if hard else min(a.warmup_epochs, epochs),
                     min_lr=a.min_lr, ema_decay=a.model_ema_decay or None, mixup=augment.mixup(a, run.num_classes),
                     fingerprint=fingerprint)

    def evaluate(m, ema):
        metrics = sttabt_metrics_with_ema(m, ema, val, run.dist)
        metrics["thresholds"] = [round(v, 6) for v in m.pruner.thresholds().tolist()]
        return metrics

    task = LTPTraining(model, dense, hard=hard, smoothing=a.smoothing, kd_weight=a.kd_weight)
    result, ema = fit(spec, run.loop, task=task, trained=model, loader=train, evaluate=evaluate)
    final = result["final"] or evaluate(model, None)
    if run.dist.main:
        save_checkpoint(model, folder / "model.pth", threshold=threshold)
        if ema is not None:
            save_checkpoint(ema, folder / "model_ema.pth", threshold=threshold)
    return _finish(run, folder, {"stage": f"ltp_{phase}", "threshold": threshold, **final,
                                 "history": result["history"]}, fingerprint)


def ltp_stage(run, teacher: Path, threshold: float) -> dict:
    """The soft, then the hard stage for one final token threshold; the hard stage's results."""
    _phase(run, teacher, threshold, "soft", None)
    return _phase(run, teacher, threshold, "hard", ltp_folder(run, threshold, "soft") / "model.pth")


def ltp_stages(run) -> list[tuple[Path, dict]]:
    """(folder, fingerprint) of every LTP stage of the run."""
    return [(ltp_folder(run, v, p), ltp_fingerprint(run, v, p)) for v in run.args.thresholds for p in PHASES]
