"""Figures of the fair studies (``docs/results/text_study.json``, ``docs/results/cifar_study.json``):
one figure per task, the task metric against relative FLOPs (the scout included), every method a
series, dense models as horizontal lines with their training budgets in the legend."""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from .figures import PANEL_SIZE

DENSE_METHODS = ("dense", "dense_teacher", "dense_control")
STYLE = {                                       # method -> (colour, marker, line style, legend name)
    "dense": ("black", "", "--", "dense"),
    "dense_teacher": ("black", "", "--", "dense teacher"),
    "dense_control": ("gray", "", "-.", "dense control (trained as long)"),
    "ltp": ("tab:green", "o", "-", "LTP (soft, then hard)"),
    "sttabt_concrete": ("tab:red", "o", "-", "STTABT concrete"),
    "abt": ("tab:blue", "s", "-", "ABT (scout)"),
    "manual_topk": ("tab:orange", "^", "-", "manual top-k"),
    "manual": ("tab:orange", "^", "-", "manual top-k (geometric)"),
    "evit_scout": ("tab:purple", "v", "-", "EViT-style CLS top-k on the scout (geometric)"),
    "evit": ("tab:cyan", "D", "-", "EViT, host's own CLS attention (online, geometric)"),
    "manual_threshold": ("tab:purple", "v", ":", "manual threshold"),
}


def _label(method: str, rows: Sequence[dict], budget_key: str | None, unit: str) -> str:
    name = STYLE.get(method, ("", "", "", method))[3]
    if budget_key is None:
        return name
    budgets = sorted({r[budget_key] for r in rows if r.get(budget_key) is not None})
    if not budgets:
        return name
    if budgets == [0]:
        return name if method in DENSE_METHODS else f"{name}, no training"
    return f"{name}, {' / '.join(f'{b:,}' for b in budgets)} {unit}"


def study_figure(rows: Sequence[dict], title: str, *, metric: str, x: str, ylabel: str,
                 budget_key: str | None = None, unit: str = "", scale: float = 100.0):
    """One panel: ``metric`` (x ``scale``) against ``x`` (relative FLOPs, in %), one series per method."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PANEL_SIZE[0] * 2.0, PANEL_SIZE[1] * 1.2), layout="constrained")
    ax = fig.subplots()
    series: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        series[r["method"]].append(r)
    for method, points in series.items():
        colour, marker, style, _ = STYLE.get(method, ("tab:brown", "P", "--", method))
        label = _label(method, points, budget_key, unit)
        if method in DENSE_METHODS:
            ax.axhline(points[0][metric] * scale, color=colour, ls=style, lw=1, label=label)
            continue
        points = sorted(points, key=lambda r: r[x])
        ax.plot([100 * r[x] for r in points], [r[metric] * scale for r in points], marker=marker, ls=style,
                color=colour, label=label)
    ax.set(title=title, xlabel="relative FLOPs (%), scout included", ylabel=ylabel)
    ax.set_xlim(0, 102)                       # the whole range: the dense models sit at 100 %
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def text_study_figures(data: dict) -> dict[str, object]:
    """``{task: figure}`` of a ``text_study.json``."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in data["rows"]:
        by_task[r["task"]].append(r)
    model = data.get("model", "").split(" (")[0]
    return {task: study_figure(rows, f"{task}, {model}", metric="metric", x="relative_flops",
                               ylabel=f"{rows[0].get('metric_name', 'metric')} (%)", budget_key="train_examples",
                               unit="examples")
            for task, rows in sorted(by_task.items())}


def cifar_study_figure(data: dict):
    return study_figure(data["rows"], f"CIFAR-10 subset ({data.get('images', '?')} test images)", metric="top1",
                        x="relative_gflops", ylabel="top-1 (%)", budget_key="extra_epochs", unit="extra epochs",
                        scale=1.0)


METHOD_NAMES = {"dense": "dense", "dense_control": "dense control", "ltp": "LTP", "sttabt_concrete": "STTABT concrete",
                "abt": "ABT (scout)", "manual_topk": "manual top-k", "manual_threshold": "manual threshold"}
METHOD_ORDER = tuple(METHOD_NAMES)


def _setting(row: dict) -> str:
    setting = row.get("setting") or {}
    if "p_logit" in setting:
        return f"p-logit {setting['p_logit']:g}"
    if "final_token_threshold" in setting:
        return f"threshold {setting['final_token_threshold']:g}"
    if "token_keep_rate" in setting:
        return f"keep {setting['token_keep_rate']:g}"
    return ""


def text_study_tables(data: dict) -> dict[str, str]:
    """``{task: markdown table}`` of a ``text_study.json``: every row with its setting, training
    examples, metric (x 100), the differences to the dense model and the dense control, relative
    FLOPs and kept share; methods in a fixed order, each sorted by relative FLOPs."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in data["rows"]:
        by_task[r["task"]].append(r)
    tables = {}
    for task, rows in sorted(by_task.items()):
        reference = {m: next((100 * r["metric"] for r in rows if r["method"] == m), None)
                     for m in ("dense", "dense_control")}
        lines = ["| method | setting | train examples | metric | Δ dense | Δ control | relative FLOPs | kept |",
                 "|---|---|---|---|---|---|---|---|"]
        order = {m: i for i, m in enumerate(METHOD_ORDER)}
        for r in sorted(rows, key=lambda r: (order.get(r["method"], len(order)), r["method"], r["relative_flops"])):
            metric = 100 * r["metric"]
            deltas = [f"{metric - ref:+.2f}" if ref is not None else "" for ref in reference.values()]
            kept = "" if r.get("kept") is None else f"{r['kept']:.2f}"
            lines.append(f"| {METHOD_NAMES.get(r['method'], r['method'])} | {_setting(r)} | {r['train_examples']:,} | "
                         f"{metric:.2f} | {deltas[0]} | {deltas[1]} | {r['relative_flops']:.3f} | {kept} |")
        tables[task] = "\n".join(lines) + "\n"
    return tables
