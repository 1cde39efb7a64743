"""The sweep summary: one row for the dense teacher, one for its dense control when it was trained
(``--dense-control``: fine-tuned like the concrete stage, without masks) and one per p-logit, as a
table, JSON and CSV (``summary.json`` is what ``tools/plot.py`` reads)."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..checkpoint import atomic_write
from .state import write_json

COLUMNS = ("p_logit", "target_keep", "keep_mean", "gflops", "speedup", "hard_top1", "soft_top1", "ema_hard_top1",
           "ema_soft_top1")


LABELS = {"dense": "dense", "dense_control": "dense+ft"}
SWEPT = ("sttabt_concrete", "ltp")  # the methods with one row per swept value


def _swept(r: dict) -> float:
    """The value a row was swept over: its p-logit (concrete) or final token threshold (LTP)."""
    return r["threshold"] if r.get("threshold") is not None else r["p_logit"]  # the table's first column for rows without p-logit


def _dense_row(method: str, results: dict) -> dict:
    return {"method": method, "p_logit": None, "target_keep": 1.0, "keep_mean": 1.0, "keep_per_layer": None,
            "gflops": results.get("gflops"), "hard_top1": results.get("top1"), "soft_top1": results.get("top1"),
            "ema_hard_top1": results.get("ema_top1"), "ema_soft_top1": results.get("ema_top1")}


def summary_rows(dense: dict, concrete: list[dict], control: dict | None = None,
                 speed: dict | None = None) -> list[dict]:
    """The rows; ``speed`` (:func:`sttabt.train.speed.measure`) adds each concrete row's measured
    ``speedup`` over the dense model (the dense rows get 1.0)."""
    measured = (speed or {}).get("rows", {})
    rows = [_dense_row("dense", dense)] + ([_dense_row("dense_control", control)] if control is not None else [])
    for r in sorted(concrete, key=_swept):
        row = {"method": "ltp" if "threshold" in r else "sttabt_concrete", **{k: r.get(k) for k in COLUMNS},
               "keep_per_layer": r.get("keep_per_layer"), "dense_gflops": r.get("dense_gflops"),
               "scout_gflops": r.get("scout_gflops"), "speedup": measured.get(_swept(r), {}).get("speedup")}
        if "threshold" in r:  # LTP rows (--pruner ltp): swept over final token thresholds, no target
            row["threshold"] = r["threshold"]
        rows.append(row)
    if speed is not None:
        for row in rows:
            if row["method"] not in SWEPT:
                row["speedup"] = 1.0
    return rows


def _cell(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(rows: list[dict]) -> str:
    """Plain-text table: p-logit, kept tokens (mean and per layer), GFLOPs, measured speedup over the
    dense model, hard/soft top-1 (+EMA)."""
    out = io.StringIO()
    head = (f"{'p_logit':>8s} {'target':>7s} {'kept':>6s} {'GFLOPs':>8s} {'speedup':>8s} {'hard':>7s} {'soft':>7s} "
            f"{'EMA hard':>9s} {'EMA soft':>9s}  kept per layer")
    out.write(head + "\n" + "-" * len(head) + "\n")
    for r in rows:
        layers = " ".join(f"{k:.2f}" for k in r["keep_per_layer"]) if r.get("keep_per_layer") else "all"
        label = LABELS.get(r["method"], "dense") if r["p_logit"] is None else f"{r['p_logit']:g}"
        if r.get("threshold") is not None:
            label = f"t={r['threshold']:g}"
        out.write(f"{label:>8s} {_cell(r['target_keep'], '7.2f')} {_cell(r['keep_mean'], '6.2f')} "
                  f"{_cell(r['gflops'], '8.4f')} {_cell(r.get('speedup'), '7.2f') + ('x' if r.get('speedup') else ' ')} "
                  f"{_cell(r['hard_top1'], '7.2f')} {_cell(r['soft_top1'], '7.2f')} "
                  f"{_cell(r['ema_hard_top1'], '9.2f')} {_cell(r['ema_soft_top1'], '9.2f')}  {layers}\n")
    return out.getvalue()


def write_summary(folder: Path, dense: dict, concrete: list[dict], approx: dict, *, main: bool = True,
                  control: dict | None = None, speed: dict | None = None) -> dict:
    rows = summary_rows(dense, concrete, control, speed)
    summary = {"run": str(folder), "rows": rows, "speed": speed,
               "scout": {k: approx.get(k) for k in ("attention_kl", "distill_loss")},
               "table": format_table(rows)}
    if main:
        write_json(folder / "summary.json", summary)
        table = io.StringIO()
        extra = ["threshold"] if any(r.get("threshold") is not None for r in rows) else []
        writer = csv.DictWriter(table, fieldnames=["method", *COLUMNS, *extra, "keep_per_layer"], extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            layers = r.get("keep_per_layer")
            writer.writerow({**r, "keep_per_layer": " ".join(f"{k:.4f}" for k in layers) if layers else ""})
        atomic_write(folder / "summary.csv", lambda f: f.write(table.getvalue()), mode="w")
    return summary
