"""The project's figures, drawn with matplotlib's object API (no pyplot state, no display needed).

* :func:`sweep_figure`: accuracy against the average share of kept tokens and against GFLOPs (scout
  included), one series per sweep (method and factor), each dense model as a dashed line of its
  colour, and the published DeiT-S / LV-ViT-S numbers as labelled markers when a sweep's host is one
  of them.
* :func:`glue_figure`: one panel per GLUE task, the task metric against the kept share, one series
  per method.

:func:`save_figure` writes PNG and SVG.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

from .reference import Published, published
from .results import Sweep

FIG_DPI = 150
PANEL_SIZE = (5.0, 3.8)                 # inches per panel
SMALL_GFLOPS = 0.1                      # below this the FLOPs axis is drawn in MFLOPs
PUBLISHED_MARKERS = "s^vD<>Ph*X"        # one marker per published method, in order of appearance
GLUE_STYLE = {                          # method -> (colour, marker, line style)
    "dense": ("black", "", "--"),
    "LTP": ("tab:green", "o", "-"),
    "STTABT concrete (trained)": ("tab:red", "o", "-"),
    "STTABT concrete (untrained)": ("tab:red", "x", ":"),
    "ABT, approximated attention": ("tab:blue", "s", "-"),
    "ABT, actual attention": ("tab:blue", "D", ":"),
    "manual top-k": ("tab:orange", "^", "-"),
    "manual threshold": ("tab:purple", "v", ":"),
}
EXTRA_STYLES = [(c, "P", "--") for c in ("tab:olive", "tab:cyan", "tab:brown", "tab:pink", "tab:gray")]


def _figure(panels: int, rows: int = 1):
    from matplotlib.figure import Figure

    cols = -(-panels // rows)
    return Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), layout="constrained"), cols


def published_points(sweeps: Sequence[Sweep]) -> tuple[list[Published], list[Published]]:
    """(dense, others): the published numbers for the reference hosts among ``sweeps``."""
    dense, others, seen = [], [], set()
    for sweep in sweeps:
        if sweep.reference_host in seen:
            continue
        seen.add(sweep.reference_host)
        d, o = published(sweep.reference_host)
        dense += [d] if d else []
        others += o
    return dense, others


def sweep_figure(sweeps: Sequence[Sweep]):
    """Two panels: top-1 vs kept tokens (%), top-1 vs GFLOPs."""
    fig, _ = _figure(2)
    axes = fig.subplots(1, 2)
    colours = [f"C{i}" for i in range(10)]
    pub_dense, pub_others = published_points(sweeps)
    markers = {}
    ours = [p.gflops for s in sweeps for p in [*s.points, s.dense] if p is not None and p.gflops is not None]
    mega = bool(ours) and max(ours) < SMALL_GFLOPS and not any(p.gflops for p in pub_others)
    flops_axis = ("gflops", "MFLOPs (scout included)" if mega else "GFLOPs (scout included)")
    for ax, (x_key, x_label) in zip(axes, (("keep", "average kept tokens (%)"), flops_axis)):
        scale = 100.0 if x_key == "keep" else (1e3 if mega else 1.0)
        for i, sweep in enumerate(sweeps):
            colour = colours[i % len(colours)]
            points = [p for p in sweep.points if getattr(p, x_key) is not None and p.top1 is not None]
            if points:
                ax.plot([getattr(p, x_key) * scale for p in points], [p.top1 for p in points], "o-", color=colour,
                        label=sweep.label)
                for p in points:
                    ax.annotate(f"{p.p_logit:g}", (getattr(p, x_key) * scale, p.top1), textcoords="offset points",
                                xytext=(4, -10), fontsize=7, color=colour)
            if sweep.dense is not None and sweep.dense.top1 is not None:
                ax.axhline(sweep.dense.top1, color=colour, ls="--", lw=1, label=f"dense {sweep.model}")
        for d in pub_dense:
            ax.axhline(d.top1, color="grey", ls=":", lw=1, label=f"{d.method}, published")
        for p in pub_others:
            x = getattr(p, "kept" if x_key == "keep" else "gflops")
            if x is None:                            # the paper gives only the other axis
                continue
            x *= scale
            marker = markers.setdefault(p.method, PUBLISHED_MARKERS[len(markers) % len(PUBLISHED_MARKERS)])
            ax.plot(x, p.top1, marker, color="grey", ms=6, ls="", label=p.method)
        ax.set_xlabel(x_label)
        ax.set_ylabel("top-1 (%), hard masks")
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))          # one legend entry per label
        ax.legend(unique.values(), unique.keys(), fontsize=7, loc="lower right")
    fig.suptitle("Accuracy against kept tokens and FLOPs (p-logit next to each point)", fontsize=10)
    return fig


def glue_figure(points: Sequence) -> "Figure":  # noqa: F821  (matplotlib's Figure)
    """One panel per task: the task metric against the kept share, one series per method."""
    by_task: dict[str, list] = defaultdict(list)
    for p in points:
        by_task[p.task].append(p)
    tasks = sorted(by_task)
    fig, cols = _figure(len(tasks), rows=1 if len(tasks) <= 3 else 2)
    axes = fig.subplots(-(-len(tasks) // cols), cols, squeeze=False).ravel()
    for ax in axes[len(tasks):]:
        ax.set_visible(False)
    for ax, task in zip(axes, tasks):
        series: dict[str, list] = defaultdict(list)
        for p in by_task[task]:
            series[p.method].append(p)
        extra = sorted(set(series) - set(GLUE_STYLE))      # labelled series (eval_glue.py --label)
        styles = {**GLUE_STYLE, **{m: EXTRA_STYLES[i % len(EXTRA_STYLES)] for i, m in enumerate(extra)}}
        for method in (m for m in [*GLUE_STYLE, *extra] if m in series):
            colour, marker, style = styles[method]
            pts = sorted(series[method], key=lambda p: p.kept)
            if method == "dense":
                ax.axhline(pts[0].metric * 100, color=colour, ls=style, lw=1, label=method)
                continue
            ax.plot([p.kept * 100 for p in pts], [p.metric * 100 for p in pts], marker=marker, ls=style,
                    color=colour, label=method)
        ax.set_title(task)
        ax.set_xlabel("average kept tokens (%)")
        ax.set_ylabel(f"{by_task[task][0].metric_name} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return fig


def save_figure(fig, folder: str | Path, name: str) -> list[Path]:
    """``folder/name.png`` and ``folder/name.svg`` (SVG text kept as text, so it can be searched)."""
    import matplotlib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}.{ext}" for ext in ("png", "svg")]
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": name}):
        for path in paths:
            fig.savefig(path, dpi=FIG_DPI)
    return paths
