"""GLUE results as plot points: one :class:`GluePoint` per (task, method, setting).

Two kinds of input, both written by the project's tools:

* a JSON file of ``tools/eval_glue.py --output F`` (one setting, or a sweep with ``rows``);
* a training output folder of ``tools/run_glue.py`` / ``tools/run_ltp.py``: ``eval_results.json``
  and ``config.json``; when its ``checkpoint-*`` folders hold a ``trainer_state.json``, the best of
  the run's evaluations is used (what the reference scripts report), else the final evaluation.

The method of a point is the ``method`` field when the file has one (``eval_glue.py --label``), else
it follows from the prune mode (:func:`method_name`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .glue import task_spec

EVAL_RESULTS = "eval_results.json"
CONFIG = "config.json"
TRAINER_STATE = "trainer_state.json"
EVAL_PREFIX = "eval_"

# Method names of the GLUE figure, in legend order.
DENSE = "dense"
LTP = "LTP"
CONCRETE_TRAINED = "STTABT concrete (trained)"
CONCRETE_UNTRAINED = "STTABT concrete (untrained)"
ABT_APPROX = "ABT, approximated attention"
ABT_ACTUAL = "ABT, actual attention"
MANUAL_TOPK = "manual top-k"
MANUAL_THRESHOLD = "manual threshold"
METHODS = (DENSE, LTP, CONCRETE_TRAINED, CONCRETE_UNTRAINED, ABT_APPROX, ABT_ACTUAL, MANUAL_TOPK, MANUAL_THRESHOLD)

_BY_MODE = {"none": DENSE, "topk": MANUAL_TOPK, "sttabt_abt": ABT_APPROX, "sttabt_abt_oracle": ABT_ACTUAL}


@dataclass
class GluePoint:
    task: str
    method: str
    metric_name: str
    metric: float
    kept: float                 # mean share of the tokens that enter each layer, 0-1
    relative_flops: float
    source: str                 # the file it was read from

    def to_dict(self) -> dict:
        return dict(vars(self))


def method_name(prune_mode: str, *, trained: bool) -> str:
    """The figure's method for a prune mode; ``trained``: thresholds / p-logits were learned."""
    if prune_mode == "absolute_threshold":
        return LTP if trained else MANUAL_THRESHOLD
    if prune_mode == "sttabt_concrete":
        return CONCRETE_TRAINED if trained else CONCRETE_UNTRAINED
    if prune_mode in _BY_MODE:
        return _BY_MODE[prune_mode]
    raise ValueError(f"no GLUE-figure method for prune_mode {prune_mode!r}")


def learned(model) -> bool:
    """Whether ``model``'s pruner carries learned values: LTP threshold deltas away from 0, or STTABT
    p-logits that no longer all equal their common start."""
    pruner = getattr(getattr(model, "ltp", model), "pruner", None)
    if pruner is None:
        return False
    if hasattr(pruner, "threshold_delta"):
        return bool(pruner.threshold_delta.detach().abs().max() > 0)
    if hasattr(pruner, "p_logits"):
        logits = pruner.p_logits.detach()
        return bool((logits - logits[0]).abs().max() > 0)
    return False


def _point(row: dict, task: str, method: str, source: str, prefix: str = "") -> GluePoint:
    metric_name = task_spec(task).metric
    try:
        return GluePoint(task, method, metric_name, float(row[prefix + metric_name]), float(row[prefix + "kept_mean"]),
                         float(row[prefix + "relative_flops"]), source)
    except KeyError as err:
        raise ValueError(f"{source}: no {err.args[0]!r} in the results (written by an older tool?)") from None


def read_eval_file(path: str | Path) -> list[GluePoint]:
    """The points of one ``tools/eval_glue.py --output`` JSON file."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    task = data.get("task")
    if task is None:
        raise ValueError(f"{path}: no 'task' field; is it the JSON of tools/eval_glue.py --output?")
    rows = data.get("rows") or [data]
    return [_point(r, task, r.get("method") or data.get("method")
                   or method_name(r["prune_mode"], trained=bool(r.get("learned"))), str(path)) for r in rows]


def _best_eval(folder: Path, metric_key: str) -> dict | None:
    """The evaluation with the best ``metric_key`` in the newest ``checkpoint-*/trainer_state.json``."""
    states = sorted(folder.glob(f"checkpoint-*/{TRAINER_STATE}"),
                    key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))
    if not states:
        return None
    history = json.loads(states[-1].read_text(encoding="utf-8")).get("log_history", [])
    evals = [h for h in history if metric_key in h and EVAL_PREFIX + "relative_flops" in h]
    return max(evals, key=lambda h: h[metric_key]) if evals else None


def read_run_folder(folder: str | Path, task: str | None = None) -> list[GluePoint]:
    """The point of a training output folder (``eval_results.json`` + ``config.json``)."""
    folder = Path(folder)
    results = folder / EVAL_RESULTS
    if not results.is_file():
        raise FileNotFoundError(f"{folder}: no {EVAL_RESULTS} (the run did not finish its evaluation)")
    config = json.loads((folder / CONFIG).read_text(encoding="utf-8")) if (folder / CONFIG).is_file() else {}
    task = task or config.get("finetuning_task")
    if task is None:
        raise ValueError(f"{folder}: the task is not in {CONFIG}; name it: TASK=FOLDER")
    task = task_spec(task).name
    mode = config.get("prune_mode", "none")
    method = method_name(mode, trained=mode != "none")
    metric_key = EVAL_PREFIX + task_spec(task).metric
    best = _best_eval(folder, metric_key)
    if best is not None:
        return [_point(best, task, method, str(folder), prefix=EVAL_PREFIX)]
    final = json.loads(results.read_text(encoding="utf-8"))
    prefix = EVAL_PREFIX if metric_key in final else ""
    if method == DENSE:  # run_glue.py's dense evaluation reports no FLOPs: every token is kept
        final = {prefix + "kept_mean": 1.0, prefix + "relative_flops": 1.0, **final}
    return [_point(final, task, method, str(folder), prefix=prefix)]


def _task_prefix(item: str) -> tuple[str | None, Path]:
    """``"TASK=PATH"`` -> (task, path) when the prefix is a GLUE task name; else (None, the whole item)."""
    task, sep, rest = item.partition("=")
    if sep:
        try:
            return task_spec(task).name, Path(rest)
        except ValueError:
            pass
    return None, Path(item)


def read_glue(paths: list[str]) -> tuple[list[GluePoint], list[str]]:
    """Points from files and folders (``TASK=PATH`` names the task of a folder whose config does not);
    the unreadable ones give one message each."""
    points, problems = [], []
    for item in paths:
        task, path = _task_prefix(item)
        try:
            if path.is_dir():
                points += read_run_folder(path, task or None)
            elif path.is_file():
                points += read_eval_file(path)
            else:
                raise FileNotFoundError(f"GLUE result not found: {path}")
        except json.JSONDecodeError as err:  # before ValueError, its base class
            problems.append(f"{path}: unreadable, not valid JSON ({err}; empty or truncated?): rerun the tool "
                            "that wrote it")
        except (FileNotFoundError, ValueError) as err:
            problems.append(str(err))
    return points, problems
