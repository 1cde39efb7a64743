"""Reading the results the training tool writes, for plots and tables.

A *sweep* is one run folder of ``tools/train_imagenet.py`` (``OUTPUT/<model>-f<factor>/``, see
:mod:`sttabt.train.stages`): a dense row (the teacher) and one row per p-logit. It is read from
``summary.json`` when the run finished; when it did not, from the stage folders' ``results.json``
that exist, and every missing file is named in :attr:`Sweep.missing` so that the caller can say
what is absent and still plot what is there. A file that is there but truncated or not the training
tool's (not JSON, not an object, a row without its numbers) raises :class:`ResultsFileError` naming
the file and what is wrong: it is never drawn as a partial or empty series.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

SUMMARY = "summary.json"
RESULTS = "results.json"
ARGS = "args.yaml"
CONCRETE = "concrete"
TEACHER = "teacher"

# Hosts for which the published numbers of DESIGN.md section 5 apply: the registered name and the
# arguments that must be left at their defaults (a resized or reshaped host is another model).
SHAPE_ARGS = ("depth", "embed_dim", "num_heads", "patch_size", "mlp_ratio")


@dataclass
class Point:
    """One model of a sweep: accuracy (top-1, %), kept share (0-1, mean over layers) and GFLOPs."""
    method: str
    top1: float
    keep: float
    gflops: float
    p_logit: float | None = None
    ema_top1: float | None = None

    def to_dict(self) -> dict:
        return dict(vars(self))


@dataclass
class Sweep:
    folder: Path
    model: str
    factor: int | None
    dense: Point | None
    points: list[Point]
    reference_host: str | None = None          # "deit_small" / "lvvit_small" when published numbers apply
    missing: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        factor = f", factor {self.factor}" if self.factor else ""
        return f"STTABT concrete ({self.model}{factor})"

    def to_dict(self) -> dict:
        return {"folder": str(self.folder), "model": self.model, "factor": self.factor, "label": self.label,
                "reference_host": self.reference_host, "missing": self.missing,
                "dense": self.dense.to_dict() if self.dense else None, "points": [p.to_dict() for p in self.points]}


# the numbers each kind of row must hold
DENSE_SUMMARY_FIELDS = ("hard_top1", "gflops")
CONCRETE_FIELDS = ("p_logit", "hard_top1", "keep_mean", "gflops")
TEACHER_FIELDS = ("top1", "gflops")
WRITER = "tools/train_imagenet.py"


class ResultsFileError(ValueError):
    """A results file that is truncated or was not written by the training tool."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}; it is not a file {WRITER} wrote whole: rerun that stage "
                         "(or its run with --auto-resume) or move the file away")
        self.path = path


def _read_json(path: Path) -> dict | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except UnicodeDecodeError:
        raise ResultsFileError(path, "not text (not UTF-8)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        what = "empty" if not text.strip() else f"not valid JSON ({err}), truncated?"
        raise ResultsFileError(path, what) from None
    if not isinstance(data, dict):
        raise ResultsFileError(path, f"a JSON {type(data).__name__}, not the object of named results")
    return data


def _check_row(row, fields: tuple[str, ...], path: Path, what: str) -> dict:
    """``row`` when it is an object holding every one of ``fields`` as a number, else the error."""
    if not isinstance(row, dict):
        raise ResultsFileError(path, f"{what} is a {type(row).__name__}, not an object")
    missing = [k for k in fields if k not in row]
    wrong = [k for k in fields if k in row and (isinstance(row[k], bool) or not isinstance(row[k], (int, float)))]
    if missing or wrong:
        parts = ([f"no {', '.join(missing)}"] if missing else []) + \
            [f"{k} is {row[k]!r}, not a number" for k in wrong]
        raise ResultsFileError(path, f"{what} has {'; '.join(parts)}")
    return row


def _number(value) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def find_run_folders(path: str | Path) -> list[Path]:
    """The run folders under ``path``: ``path`` itself when it is one, else its ``<model>-f<factor>``
    sub-folders (the layout ``--output`` gets). A folder is a run when it holds ``args.yaml``,
    ``summary.json`` or a ``concrete/`` stage folder."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder not found: {path}")

    def is_run(p: Path) -> bool:
        return any((p / name).exists() for name in (ARGS, SUMMARY, CONCRETE))

    if is_run(path):
        return [path]
    runs = sorted(p for p in path.iterdir() if p.is_dir() and is_run(p))
    if not runs:
        raise FileNotFoundError(f"{path} holds no training run (no {ARGS}, {SUMMARY} or {CONCRETE}/ in it or in "
                                "its sub-folders): pass the --output folder of tools/train_imagenet.py")
    return runs


def _reference_host(args: dict) -> str | None:
    model = args.get("model")
    kwargs = args.get("model_kwargs") or {}
    if model not in ("sttabt_deit_small", "sttabt_lvvit_small") or args.get("img_size") not in (None, 224):
        return None
    if any(k in kwargs for k in SHAPE_ARGS):
        return None
    return model.removeprefix("sttabt_")


def _dense_point(row: dict) -> Point:
    return Point("dense", _number(row.get("hard_top1")), 1.0, _number(row.get("gflops")),
                 ema_top1=_number(row.get("ema_hard_top1")))


def _concrete_point(row: dict) -> Point:
    return Point("sttabt_concrete", _number(row.get("hard_top1")), _number(row.get("keep_mean")),
                 _number(row.get("gflops")), p_logit=_number(row.get("p_logit")),
                 ema_top1=_number(row.get("ema_hard_top1")))


def _partial(folder: Path, missing: list[str]) -> tuple[Point | None, list[Point]]:
    """Rows from the stage folders of an unfinished run; what is absent goes to ``missing``."""
    teacher = _read_json(folder / TEACHER / RESULTS)
    dense = None
    if teacher is None:
        missing.append(str(folder / TEACHER / RESULTS))
    else:
        _check_row(teacher, TEACHER_FIELDS, folder / TEACHER / RESULTS, "the teacher's results")
        dense = Point("dense", _number(teacher.get("top1")), 1.0, _number(teacher.get("gflops")),
                      ema_top1=_number(teacher.get("ema_top1")))
    points = []
    stages = sorted((folder / CONCRETE).glob("p_logit_*")) if (folder / CONCRETE).is_dir() else []
    if not stages:
        missing.append(str(folder / CONCRETE / "p_logit_*"))
    for stage in stages:
        results = _read_json(stage / RESULTS)
        if results is None:
            missing.append(str(stage / RESULTS) + " (stage unfinished)")
        else:
            points.append(_concrete_point(_check_row(results, CONCRETE_FIELDS, stage / RESULTS, "the stage's results")))
    return dense, sorted(points, key=lambda p: p.p_logit)


def read_sweep(folder: str | Path) -> Sweep:
    """One run folder as a :class:`Sweep` (``FileNotFoundError`` when nothing usable is there)."""
    folder = Path(folder)
    missing: list[str] = []
    args_path = folder / ARGS
    try:
        args = yaml.safe_load(args_path.read_text(encoding="utf-8")) if args_path.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ResultsFileError(args_path, f"not valid YAML ({type(err).__name__})") from None
    if args is not None and not isinstance(args, dict):
        raise ResultsFileError(args_path, f"a YAML {type(args).__name__}, not the mapping of the run's arguments")
    if args is None:
        missing.append(str(args_path))
        args = {}
    summary = _read_json(folder / SUMMARY)
    if summary is not None:
        path = folder / SUMMARY
        rows = summary.get("rows")
        if not isinstance(rows, list):
            raise ResultsFileError(path, "no list of rows" if rows is None else f"rows is a {type(rows).__name__}")
        for i, r in enumerate(rows):
            _check_row(r, (), path, f"row {i}")
            fields = {"dense": DENSE_SUMMARY_FIELDS, "sttabt_concrete": CONCRETE_FIELDS}.get(r.get("method"))
            if fields is None:
                raise ResultsFileError(path, f"row {i} has method {r.get('method')!r}, not dense or sttabt_concrete")
            _check_row(r, fields, path, f"row {i} ({r['method']})")
        dense = next((_dense_point(r) for r in rows if r["method"] == "dense"), None)
        points = [_concrete_point(r) for r in rows if r["method"] == "sttabt_concrete"]
    else:
        missing.append(str(folder / SUMMARY) + " (run unfinished)")
        dense, points = _partial(folder, missing)
    if dense is None and not points:
        raise FileNotFoundError(f"{folder}: no results to plot (missing: {'; '.join(missing)})")
    model = args.get("model") or folder.name.rsplit("-f", 1)[0]
    factor = args.get("factor")
    if factor is None and "-f" in folder.name:
        tail = folder.name.rsplit("-f", 1)[1]
        factor = int(tail) if tail.isdigit() else None
    return Sweep(folder, model, factor, dense, points, _reference_host(args), missing)


def read_sweeps(paths: list[str | Path]) -> tuple[list[Sweep], list[str]]:
    """Every readable sweep under ``paths`` and, for the missing ones, one message each; a file that is
    there but unreadable raises :class:`ResultsFileError`."""
    sweeps, problems = [], []
    for path in paths:
        try:
            folders = find_run_folders(path)
        except FileNotFoundError as err:
            problems.append(str(err))
            continue
        for folder in folders:
            try:
                sweeps.append(read_sweep(folder))
            except FileNotFoundError as err:
                problems.append(str(err))
    return sweeps, problems
