#!/usr/bin/env python
"""Training-free pruners compared at the same keep budgets on the same images, with one host and scout.

    python tools/compare.py --model sttabt_deit_small --data ../shared/data/imagenet-sample \\
        --checkpoint runs/X/concrete/p_logit_0/model.pth --keep 0.3 0.5 0.7
    python tools/compare.py --model sttabt_deit_small --data /data/imagenet/val --limit 2000 \\
        --teacher-checkpoint deit_small_patch16_224-cd65a155.pth --pruners abt evit_scout evit --device cuda

For each (pruner, keep): top-1 on the pruned executor with hard masks, the mean share of tokens the
layers take in, GFLOPs per image (each image's own plan, the planning pass included: the scout, or
for ``abt_oracle`` a dense pass of the host itself, so the oracle costs more than dense), and the
measured images/s of the dense host and of the pruned model, timed alternately on the first batch
in this run (median of ``--repeats``). A dense row comes first.

``--data``: an ImageFolder tree (one sub-folder per class) or a flat folder of ImageNet files named
``<wnid>_<name>.JPEG`` (labels: ImageNet-1k class indices). ``--limit N`` keeps N images spread
evenly over the sorted file list. Writes ``compare.json``, ``compare.csv``, ``compare.png`` and
``compare.svg`` under ``--out`` (default ``runs/compare/<model>``).

With ``--checkpoint``, the checkpoint's own pruner (its trained p-logits or saved keep ratios) gets
a row of its own, ``checkpoint (<name>)``, after the dense row; ``--pruners`` without the name
``checkpoint`` leaves it out. ``--model`` also takes a dense timm name (``deit_small_patch16_224``),
wrapped with ``sttabt.wrap``. An unreadable image stops the tool naming the file (nothing is
written); ``--skip-bad-images`` leaves such files out and lists them in ``compare.json``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

import sttabt  # noqa: E402  (registers the models)
import timm  # noqa: E402
from sttabt import compare  # noqa: E402
from sttabt.checkpoint import atomic_write  # noqa: E402
from sttabt.data import BadImageError, eval_transform, labelled_images, load_images, load_readable  # noqa: E402
from sttabt.figures import save_figure  # noqa: E402
from sttabt.pruners.masks import check_keep  # noqa: E402
from sttabt.registry import HOSTS  # noqa: E402
from sttabt.timing import device_name  # noqa: E402
from _common import check_counts, check_device, fail, model_kind, pruner_kind  # noqa: E402

DEFAULT_KEEPS = (0.3, 0.5, 0.7)
DEFAULT_FACTOR = 4
CSV_COLUMNS = ("pruner", "keep", "budget", "top1", "correct", "images", "keep_mean", "gflops", "host_gflops",
               "planning_gflops", "planning_pass", "relative_flops", "ideal_speedup", "dense_img_s",
               "pruned_img_s", "speedup")
IDEAL_POINTS = 100  # points of the ideal-speedup curve
OWN = "checkpoint"  # --pruners name of the checkpoint's own pruner


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="registered STTABT model, e.g. sttabt_deit_small, or a dense "
                        "timm ViT with a class token (deit_small_patch16_224), wrapped with sttabt.wrap")
    parser.add_argument("--data", required=True, help="ImageFolder tree or flat folder of <wnid>_<name>.JPEG files")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--checkpoint", help="STTABT checkpoint written by training (its host and scout are used)")
    weights.add_argument("--teacher-checkpoint", help="dense teacher weights; the scout is interpolated from them")
    parser.add_argument("--factor", type=int, help=f"scout thinning factor (default {DEFAULT_FACTOR}; "
                        "with --checkpoint: the checkpoint's)")
    parser.add_argument("--keep", type=float, nargs="+", default=list(DEFAULT_KEEPS), help="keep ratios in (0, 1]")
    parser.add_argument("--pruners", nargs="+",
                        help=f"training-free pruners, and '{OWN}' for the --checkpoint's own pruner (default: "
                        f"{OWN} when a --checkpoint is given, then {' '.join(compare.TRAINING_FREE)})")
    parser.add_argument("--limit", type=int, help="use this many images, spread evenly over the sorted list")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per pruner (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds before timing")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="leave unreadable image files out (listed in compare.json) instead of stopping")
    parser.add_argument("--img-size", type=int, help="image size, if not the model's default")
    parser.add_argument("--num-classes", type=int, help="classes, if not the model's default")
    parser.add_argument("--out", help="output folder (default runs/compare/<model>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    model_kind(args.model)
    if args.pruners is None:
        args.pruners = ([OWN] if args.checkpoint else []) + list(compare.TRAINING_FREE)
    own = OWN in args.pruners
    if own and not args.checkpoint:
        fail(f"--pruners {OWN} is the --checkpoint's own pruner; give a --checkpoint or leave {OWN} out")
    try:
        args.keep = list(dict.fromkeys(check_keep(k) for k in args.keep))
        args.pruners = ([OWN] if own else []) + compare.check_pruners([n for n in args.pruners if n != OWN])
    except ValueError as err:
        flag = "--keep" if "keep ratio" in str(err) else "--pruners"
        fail(f"{flag}: {err}")
    check_counts(args, {"batch_size": 1, "repeats": 1, "warmup": 0, "limit": 1, "threads": 1, "factor": 1,
                        "img_size": 1, "num_classes": 1})
    args.device = check_device(args.device)
    if not os.path.isdir(args.data):
        fail(f"--data {args.data}: data folder not found")


def load_base(args: argparse.Namespace) -> tuple[sttabt.STTABT, str]:
    """The host and scout every pruner shares, and where their weights come from."""
    try:
        if args.checkpoint:
            model = sttabt.create_from_checkpoint(args.checkpoint)
            arch = model.pretrained_cfg.get("architecture")
            found = {"--model": (args.model, arch), "--factor": (args.factor, model.scout.factor),
                     "--img-size": (args.img_size, model.host.patch_embed.img_size[0]),
                     "--num-classes": (args.num_classes, model.num_classes)}
            if HOSTS.get(arch) == args.model:  # the host's own timm name: the same model
                found["--model"] = (arch, arch)
            for flag, (asked, stored) in found.items():
                if asked is not None and asked != stored:
                    fail(f"{flag} {asked} but the checkpoint holds {stored}; drop {flag} or pass {stored}")
            return model.eval(), f"checkpoint {args.checkpoint}"
        size = {k: v for k, v in (("img_size", args.img_size), ("num_classes", args.num_classes)) if v}
        factor = args.factor or DEFAULT_FACTOR
        if model_kind(args.model) == "sttabt":
            model = timm.create_model(args.model, factor=factor, pruner="abt", **size)
        else:
            model = sttabt.wrap(timm.create_model(args.model, pretrained=False, **size), factor=factor, pruner="abt")
        if args.teacher_checkpoint:
            sttabt.load_teacher(model, args.teacher_checkpoint)
            warnings.warn("the scout is interpolated from the teacher, not distilled: the pruners read a "
                          "rough approximation of the host's attention (distil it with tools/train_imagenet.py)",
                          stacklevel=2)
            return model.eval(), f"teacher {args.teacher_checkpoint} (scout not distilled)"
    except ValueError as err:
        fail(str(err))
    warnings.warn("no --checkpoint or --teacher-checkpoint: host and scout have RANDOM weights, "
                  "the accuracies mean nothing", stacklevel=2)
    return model.eval(), "random"


def batches(files, labels, transform, batch_size: int, device: torch.device, skipped: list[str] | None = None,
            first: list[torch.Tensor] | None = None):
    """(images, labels) batches on ``device``; an unreadable file raises ``BadImageError``, or, with a
    ``skipped`` list, is appended to it and left out. ``first`` receives the first batch (for timing)."""
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        if skipped is None:
            images, kept = load_images(chunk, transform), range(len(chunk))
        else:
            images, kept, bad = load_readable(chunk, transform)
            skipped += bad
            if images is None:
                continue
        images = images.to(device)
        if first is not None and not first:
            first.append(images)
        yield images, torch.tensor([labels[start + i] for i in kept], device=device)


def print_table(rows: list[dict]) -> None:
    print(f"{'pruner':<11} {'keep':>5} {'top-1':>7} {'kept':>6} {'GFLOPs':>8} {'planning':>9} "
          f"{'dense/s':>9} {'pruned/s':>9} {'speedup':>8} {'ideal':>6}")
    for r in rows:
        keep = "-" if r["keep"] is None else f"{r['keep']:.2f}"
        print(f"{r['pruner']:<11} {keep:>5} {r['top1']:>6.2f}% {r['keep_mean']:>6.3f} {r['gflops']:>8.3f} "
              f"{r['planning_gflops']:>9.3f} {r['dense_img_s']:>9.1f} {r['pruned_img_s']:>9.1f} "
              f"{r['speedup']:>7.2f}x {r['ideal_speedup']:>5.2f}x")
    if any(r["pruner"] == "abt_oracle" for r in rows):
        print("abt_oracle: its planning column is a dense pass of the host itself up to the last layer's "
              "attention, counted in its GFLOPs (an oracle for the scout's quality, not a saving)")


def write_csv(rows: list[dict], path: str) -> None:
    def write(f) -> None:
        writer = csv.DictWriter(f, fieldnames=[*CSV_COLUMNS, "keep_per_layer"])
        writer.writeheader()
        for r in rows:
            writer.writerow({**{k: r[k] for k in CSV_COLUMNS},
                             "keep_per_layer": " ".join(f"{k:.4f}" for k in r["keep_per_layer"])})

    atomic_write(path, write, mode="w")


def figure(rows: list[dict], title: str):
    """Top-1 and measured speedup against GFLOPs, one series per pruner (matplotlib object API)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    acc, speed = fig.subplots(1, 2)
    dense = rows[0]
    for name in dict.fromkeys(r["pruner"] for r in rows[1:]):
        series = sorted((r for r in rows if r["pruner"] == name), key=lambda r: r["gflops"])
        x = [r["gflops"] for r in series]
        acc.plot(x, [r["top1"] for r in series], "o-", label=name)
        speed.plot(x, [r["speedup"] for r in series], "o-", label=name)
    acc.axhline(dense["top1"], color="black", linestyle="--", label=f"dense ({dense['gflops']:.2f} GFLOPs)")
    acc.plot([dense["gflops"]], [dense["top1"]], "k*", markersize=10)
    speed.plot([dense["gflops"]], [1.0], "k*", markersize=10, label="dense")
    acc.set(xlabel="GFLOPs per image (planning included)", ylabel="top-1 (%)", title=title)
    lo = min(r["gflops"] for r in rows)
    hi = max(r["gflops"] for r in rows)
    grid = [lo + (hi - lo) * i / (IDEAL_POINTS - 1) for i in range(IDEAL_POINTS)]
    speed.plot(grid, [dense["gflops"] / g for g in grid], color="gray", linestyle=":", label="ideal (dense / GFLOPs)")
    speed.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
    speed.set(xlabel="GFLOPs per image (planning included)", ylabel="measured speedup over dense",
              title="throughput, timed side by side")
    for ax in (acc, speed):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return fig


def write_outputs(report: dict, out: str) -> list[str]:
    paths = [os.path.join(out, "compare.json"), os.path.join(out, "compare.csv")]
    atomic_write(paths[0], lambda f: json.dump(report, f, indent=2), mode="w")
    write_csv(report["rows"], paths[1])
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        warnings.warn("matplotlib is not installed: no figure (pip install -e '.[plots]')", stacklevel=2)
        return paths
    fig = figure(report["rows"], f"{report['settings']['model']}, {report['settings']['images']} images")
    return paths + [str(path) for path in save_figure(fig, out, "compare")]


def main(argv=None) -> int:
    args = parse_args(argv)
    check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        data = labelled_images(args.data, limit=args.limit)
    except ValueError as err:
        fail(f"--data: {err}")
    base, weights = load_base(args)
    if max(data.labels) >= base.num_classes:
        fail(f"the model has {base.num_classes} classes but {args.data} ({data.layout}) has labels "
             f"up to {max(data.labels)}: use data of this model's classes, or a model built with "
             f"--num-classes {len(data.classes)}")
    device = args.device
    base = base.to(device)
    runs = compare.variants(base, [n for n in args.pruners if n != OWN], args.keep)
    if OWN in args.pruners:
        runs.insert(0, compare.Variant(f"{OWN} ({pruner_kind(base.pruner)})", None, base))
    transform = eval_transform(base)
    steps = math.ceil(len(data.files) / args.batch_size)
    skipped, first = ([] if args.skip_bad_images else None), []
    with tqdm(total=steps + len(runs), desc="evaluate", unit="step", disable=args.no_progress) as bar:
        try:
            dense, tallies = compare.evaluate(base, runs, batches(data.files, data.labels, transform, args.batch_size,
                                                                  device, skipped, first), step=lambda: bar.update())
        except BadImageError as err:
            fail(f"{err}; or pass --skip-bad-images")
        if not first:
            fail(f"none of the {len(data.files)} files under {args.data} is a readable image")
        bar.set_description("time")
        timed = first[0]
        timings = compare.time_variants(base, runs, timed, warmup=args.warmup, repeats=args.repeats,
                                        step=lambda: bar.update())
    rows = compare.table(base, runs, dense, tallies, timings, timed.shape[0])
    settings = {"model": args.model, "weights": weights, "factor": base.scout.factor,
                "img_size": base.host.patch_embed.img_size[0], "num_classes": base.num_classes,
                "data": os.path.abspath(args.data), "layout": data.layout, "images": dense.images,
                "skipped_images": skipped or [],
                "limit": args.limit, "batch_size": args.batch_size, "timing_batch": timed.shape[0],
                "warmup": args.warmup, "repeats": args.repeats, "pruners": args.pruners, "keeps": args.keep,
                "dtype": "float32", "executor": "pruned, hard masks"}
    report = {"settings": settings, "device": device_name(device), "torch": torch.__version__, "rows": rows}
    print(f"{args.model}: {dense.images} images ({data.layout}), weights: {weights}, {report['device']}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s): {', '.join(skipped)}")
    print_table(rows)
    out = args.out or os.path.join("runs", "compare", args.model)
    for path in write_outputs(report, out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
