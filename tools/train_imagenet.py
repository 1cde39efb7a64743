#!/usr/bin/env python
"""Train STTABT end to end: (dense teacher,) approximation network, one concrete model per p-logit.

    torchrun --nproc_per_node 8 tools/train_imagenet.py --model sttabt_lvvit_small \\
        --data-path /data/imagenet --teacher-checkpoint lvvit_s-26M-224-83.3.pth.tar \\
        --factor 4 --p-logits "-1.5 -1.0 -0.5 0.0 1.0" --auto-resume

    python tools/train_imagenet.py --config configs/digits_demo.yaml     # one CPU process

See README.md ("Training") for the stages, the output layout and the configs.
"""
from __future__ import annotations

import sys
from pathlib import Path

import sttabt  # noqa: F401  (registers the models; fixes torchvision first)
from sttabt.train import data, parse_args, run_pipeline
from sttabt.train.distributed import setup, teardown
from sttabt.train.loop import Loop
from sttabt.train.stages import Run


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    dist = setup(args.device)
    try:
        if args.total_batch_size % (args.batch_size * dist.world):
            raise ValueError(f"--total-batch-size {args.total_batch_size} is not a multiple of --batch-size "
                             f"{args.batch_size} x {dist.world} processes")
        train = data.load_split(args.dataset, args.data_path, args.train_split)
        val = data.load_split(args.dataset, args.data_path, args.val_split)
        if list(train.classes) != list(val.classes):
            raise ValueError(f"the classes of {train.where} and {val.where} differ")
        train, val = train.subset(args.max_train_images), val.subset(args.max_val_images)
        loop = Loop(dist, accum_steps=args.total_batch_size // (args.batch_size * dist.world),
                    batch_size=args.batch_size, save_every=args.save_every, amp=args.amp,
                    tensorboard=args.tensorboard, progress=args.progress)
        run = Run(args, dist, loop, Path(args.output) / f"{args.model}-f{args.factor}", train, val)
        summary = run_pipeline(run)
    except ValueError as err:
        if dist.main:
            print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        teardown(dist)
    if dist.main:
        print("\n" + summary["table"])
        print(f"outputs: {run.folder}/ (summary.json, summary.csv, one folder per stage with log.jsonl and tb/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
