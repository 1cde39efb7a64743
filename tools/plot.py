#!/usr/bin/env python
"""Figures from the files the training tools write.

    python tools/plot.py runs/cifar10_v2 --out docs/figures
    python tools/plot.py --glue runs/glue/*.json runs/glue/minilm_sst2 --out docs/figures
    python tools/plot.py runs/deit_small runs/deit_small_f8 --glue ... --out figs --name imagenet

``RUN_DIR``: the ``--output`` folder of ``tools/train_imagenet.py`` (or one of its ``<model>-f<factor>``
folders); its ``summary.json`` is read, or, for an unfinished run, the ``results.json`` of the stages
that finished. Writes ``<name>_accuracy.png/.svg`` (top-1 against average kept tokens and against
GFLOPs, scout included; one series per method and factor, the dense model as a dashed line, the
published DeiT-S / LV-ViT-S numbers of DESIGN.md section 5 as grey markers when a run's host is one of
them) and ``<name>_accuracy.json`` (the numbers drawn).

``--glue``: JSON files of ``tools/eval_glue.py --output`` and training folders of ``tools/run_glue.py`` /
``tools/run_ltp.py`` (``TASK=FOLDER`` when the folder's config does not name its task). Writes
``<name>_glue.png/.svg`` (one panel per task: the metric against kept tokens, one series per method:
STTABT concrete trained and untrained, ABT on approximated and actual attention, LTP, manual top-k,
manual threshold, dense) and ``<name>_glue.json``.

``--study``: ``docs/results/text_study.json`` (``tools/study_glue.py``; one figure per task,
``<name>_<task>.png/.svg``: the metric against relative FLOPs, every method, dense and the dense
control as lines, each series' training budget in the legend) or ``cifar_study.json``
(``tools/study_cifar.py``; ``<name>_cifar.png/.svg``); for the text study also each task's table
(``<name>_<task>.md``, the rows as docs/RESULTS.md shows them).

Missing or partial inputs are named on stderr and what exists is still drawn; ``--strict`` makes
that exit with status 1. Exit status 2 when nothing could be drawn, and when a ``results.json``,
``summary.json`` or ``args.yaml`` is there but truncated or foreign: that file is named, with what is
wrong, and nothing is written.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import ltp_nlp  # noqa: F401  (fixes torchvision before anything imports it)
from ltp_nlp.results import read_glue
from sttabt.checkpoint import atomic_write
from sttabt.figures import glue_figure, published_points, save_figure, sweep_figure
from sttabt.results import ResultsFileError, read_sweeps
from sttabt.study_figures import cifar_study_figure, text_study_figures, text_study_tables


def _write_json(path, payload) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(payload, indent=2) + "\n"), mode="w")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", metavar="RUN_DIR", help="output folders of tools/train_imagenet.py")
    parser.add_argument("--glue", nargs="+", default=[], metavar="FILE_OR_DIR",
                        help="eval_glue.py --output files and run_glue.py / run_ltp.py output folders")
    parser.add_argument("--study", nargs="+", default=[], metavar="JSON",
                        help="docs/results/text_study.json (one figure per task) or cifar_study.json")
    parser.add_argument("--out", required=True, help="folder for the figures and their numbers")
    parser.add_argument("--name", default="results", help="file name prefix (default: results)")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when an input is missing or unreadable")
    args = parser.parse_args(argv)
    if not args.runs and not args.glue and not args.study:
        parser.error("give RUN_DIR folders, --glue inputs or --study files")

    problems, written = [], []
    if args.runs:
        try:
            sweeps, missing = read_sweeps(args.runs)
        except ResultsFileError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        problems += missing + [f"{s.folder}: missing {m}" for s in sweeps for m in s.missing]
        if sweeps:
            written += save_figure(sweep_figure(sweeps), args.out, f"{args.name}_accuracy")
            path = f"{args.out}/{args.name}_accuracy.json"
            dense, others = published_points(sweeps)
            _write_json(path, {"sweeps": [s.to_dict() for s in sweeps],
                               "published": [vars(p) for p in dense + others]})
            written.append(path)
    if args.glue:
        points, missing = read_glue(args.glue)
        problems += missing
        if points:
            written += save_figure(glue_figure(points), args.out, f"{args.name}_glue")
            path = f"{args.out}/{args.name}_glue.json"
            _write_json(path, {"points": [p.to_dict() for p in points]})
            written.append(path)
    for path in args.study:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            images = "top1" in (data["rows"] or [{}])[0]
            figures = {"cifar": cifar_study_figure(data)} if images else text_study_figures(data)
            tables = {} if images else text_study_tables(data)  # the text study's, as docs/RESULTS.md shows them
        except (OSError, ValueError, KeyError, IndexError) as err:
            problems.append(f"{path}: not a study JSON of tools/study_glue.py / study_cifar.py ({err})")
            continue
        for name, fig in figures.items():
            written += save_figure(fig, args.out, f"{args.name}_{name.lower()}")
        for name, table in tables.items():
            table_path = f"{args.out}/{args.name}_{name.lower()}.md"
            atomic_write(table_path, lambda f, t=table: f.write(t), mode="w")
            written.append(table_path)
    for problem in problems:
        print(f"skipped: {problem}", file=sys.stderr)
    if not written:
        print("error: nothing to plot (see the messages above)", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 1 if problems and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
