#!/usr/bin/env python
"""The image study: each trained concrete model against the dense teacher and against a dense control
trained as long, and the training-free pruners at the concrete models' GFLOPs.

    python tools/train_imagenet.py --config configs/cifar10_mini.yaml --data-path ../shared/data/cifar10-mini \\
        --epochs 10 --warmup-epochs 1 --lr 5e-4 --p-logits "-0.5 0.25" --dense-control --output runs/cifar_study
    python tools/study_cifar.py runs/cifar_study/sttabt_deit_tiny-f4 --data ../shared/data/cifar10-mini/test

Reads the run's ``summary.json`` (teacher, dense control, concrete models) and ``args.yaml``, builds
the dense teacher with its distilled scout, and for every training-free pruner (``--pruners``, default
ABT, manual top-k and EViT-style CLS top-k on the scout, and EViT on the host's own attention) and every concrete model finds the schedule whose
GFLOPs per image match that model's within 5 % (bisection on the first ``--match-images``; the
schedules are in ``sttabt/study.py``), then scores it on every image of ``--data`` (hard masks, pruned
executor). Writes ``--out`` (``docs/results/cifar_study.json``) atomically; ``tools/plot.py --study``
draws it.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import timm  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402
from tqdm import tqdm  # noqa: E402

import sttabt  # noqa: E402  (registers the models)
from sttabt import study  # noqa: E402
from sttabt.checkpoint import CheckpointError, atomic_write, load_teacher  # noqa: E402
from sttabt.compare import Tally  # noqa: E402
from sttabt.data import eval_transform, labelled_images  # noqa: E402
from sttabt.flops import sttabt_flops  # noqa: E402
from sttabt.pruners import create_pruner  # noqa: E402
from sttabt.train.stages import SCOUT_WEIGHTS, TEACHER_WEIGHTS, load_scout  # noqa: E402
from sttabt.wrap import STTABT  # noqa: E402
from _common import fail  # noqa: E402
from compare import batches  # noqa: E402

DEFAULT_OUT = "docs/results/cifar_study.json"
TRAIN_COMMAND = ("python tools/train_imagenet.py --config {config} --data-path {data} --epochs {epochs} "
                 "--warmup-epochs {warmup} --lr {lr} --p-logits \"{p_logits}\" --dense-control --output {output}")


def read_run(folder: Path) -> tuple[dict, dict]:
    paths = [folder / "summary.json", folder / "args.yaml"]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: pass a finished run folder of tools/train_imagenet.py "
                                    "(OUTPUT/<model>-f<factor>)")
    return json.loads(paths[0].read_text()), yaml.safe_load(paths[1].read_text())


def teacher_and_scout(folder: Path, a: dict) -> STTABT:
    model = timm.create_model(a["model"], img_size=a["img_size"], num_classes=a.get("num_classes") or 10,
                              factor=a["factor"], pruner="abt", **(a.get("model_kwargs") or {}))
    load_teacher(model, folder / "teacher" / TEACHER_WEIGHTS, reinit_scout=False)
    load_scout(model, folder / "approx" / SCOUT_WEIGHTS)
    return model.eval()


def variant(base: STTABT, pruner: str, r: float) -> STTABT:
    keep = study.schedule(pruner, base.depth, r)
    return STTABT(base.host, base.scout, create_pruner(pruner, base.depth, keep=keep)).eval()


@torch.inference_mode()
def score(model: STTABT, data) -> Tally:
    tally = Tally()
    for images, labels in data:
        out = model.forward_detailed(images, hard=True, executor="pruned")
        tally.add(out.logits, labels, sttabt_flops(model, out.masks).to_dict())
    return tally


def train_command(a: dict) -> str:
    return TRAIN_COMMAND.format(config=a.get("config") or "configs/cifar10_mini.yaml", data=a["data_path"],
                                epochs=a["epochs"], warmup=a["warmup_epochs"], lr=a["lr"],
                                p_logits=a["p_logits"] if isinstance(a["p_logits"], str)
                                else " ".join(f"{v:g}" for v in a["p_logits"]), output=a["output"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="run folder of tools/train_imagenet.py (OUTPUT/<model>-f<factor>), finished")
    p.add_argument("--data", required=True, help="test images: an ImageFolder tree")
    p.add_argument("--pruners", nargs="+", default=["abt", "manual", "evit_scout", "evit"], choices=sorted(study.SCHEDULES))
    p.add_argument("--match-images", type=int, default=250, help="images the GFLOPs are matched on")
    p.add_argument("--batch-size", type=int, default=250)
    p.add_argument("--threads", type=int)
    p.add_argument("--out", default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.run)
    try:
        summary, a = read_run(folder)
        rows = study.trained_rows(summary, a["epochs"], train_command(a))
        base = teacher_and_scout(folder, a)
        data = labelled_images(args.data)
    except (FileNotFoundError, ValueError, CheckpointError) as err:
        fail(str(err))
    transform = eval_transform(base)
    loaded = list(batches(data.files, data.labels, transform, args.batch_size, torch.device("cpu")))
    probe = [(loaded[0][0][:args.match_images], loaded[0][1][:args.match_images])]
    by_method = {r["method"]: r for r in rows}
    dense_gflops = by_method["dense_teacher"]["gflops"]
    teacher_top1, control_top1 = by_method["dense_teacher"]["top1"], by_method["dense_control"]["top1"]
    command = "python tools/study_cifar.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
    targets = [r for r in rows if r["method"] == "sttabt_concrete"]
    with tqdm(total=len(targets) * len(args.pruners), desc="match and score", unit="model") as bar:
        for target in targets:
            for pruner in args.pruners:
                def cost(r, pruner=pruner):
                    return score(variant(base, pruner, r), probe).mean("gflops")
                r, _ = study.match(cost, target["gflops"])
                tally = score(variant(base, pruner, r), loaded)
                gflops = tally.mean("gflops")
                rows.append({"method": pruner, "extra_epochs": 0, "schedule": study.SCHEDULES[pruner], "r": r,
                             "keep_per_layer_schedule": study.schedule(pruner, base.depth, r),
                             "top1": 100.0 * tally.correct / tally.images, "gflops": gflops,
                             "relative_gflops": gflops / dense_gflops, "target_gflops": target["gflops"],
                             "keep_mean": tally.mean("keep_mean"),
                             "matched_within_5_percent": study.matched(gflops, target["gflops"]),
                             "vs_concrete": 100.0 * tally.correct / tally.images - target["top1"],
                             "vs_dense_teacher": 100.0 * tally.correct / tally.images - teacher_top1,
                             "vs_dense_control": 100.0 * tally.correct / tally.images - control_top1,
                             "p_logit_of_target": target["p_logit"], "command": command})
                bar.update()
    report = {"run": str(folder), "images": len(data.files), "data": args.data,
              "gflops": "per image, one multiply-add = one FLOP, the scout included", "rows": rows}
    atomic_write(args.out, lambda f: f.write(json.dumps(report, indent=1) + "\n"), mode="w")
    for r in rows:
        extra = f" (target {r['target_gflops'] * 1e3:.2f} M)" if "target_gflops" in r else ""
        print(f"{r['method']:<16} top-1 {r['top1']:6.2f}  {r['gflops'] * 1e3:6.2f} MFLOPs  "
              f"{100 * r['relative_gflops']:5.1f} %{extra}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
