#!/usr/bin/env python
"""Train STTABT end to end: (dense teacher,) approximation network, one concrete model per p-logit.

    torchrun --nproc_per_node 8 tools/train_imagenet.py --model sttabt_lvvit_small \\
        --data-path /data/imagenet --teacher-checkpoint lvvit_s-26M-224-83.3.pth.tar \\
        --factor 4 --p-logits "-1.5 -1.0 -0.5 0.0 1.0" --auto-resume

    python tools/train_imagenet.py --config configs/digits_demo.yaml     # one CPU process

See README.md ("Training") for the stages, the output layout and the configs.

Bad input ends the run with ``error: <what to change>`` and exit status 2: everything checked before
work starts is reported once (every process finds the same), bad input met during training (a corrupt
image) by the process that met it. Any other exception is a bug: it surfaces with its traceback, and
the other processes, whose next collective fails, stop with one line naming it (torchrun then ends
them all).
"""
from __future__ import annotations

import os
import sys
from datetime import timedelta
from pathlib import Path

import sttabt  # noqa: F401  (registers the models; fixes torchvision first)
from sttabt.train import check_inputs, data, parse_args, train_stages
from sttabt.train.distributed import Dist, setup, teardown
from sttabt.train.errors import InputError, one_line
from sttabt.train.loop import Loop
from sttabt.train.stages import Run

PEER_FAILED = 1  # exit status of a process stopped because another one failed
SAME_ERROR_WAIT = timedelta(seconds=10)  # how long another process waits to see rank 0 refuse the same input


def report(message: str, dist: Dist | None = None) -> None:
    where = f"[rank {dist.rank}] " if dist is not None and dist.enabled else ""
    print(f"error: {where}{message}", file=sys.stderr, flush=True)


def prepare(args, dist: Dist) -> Run:
    """Data, run folder and every check: ``ValueError`` before any work starts."""
    if args.total_batch_size % (args.batch_size * dist.world):
        raise ValueError(f"--total-batch-size {args.total_batch_size} is not a multiple of --batch-size "
                         f"{args.batch_size} x {dist.world} processes")
    train = data.load_split(args.dataset, args.data_path, args.train_split)
    val = data.load_split(args.dataset, args.data_path, args.val_split)
    if list(train.classes) != list(val.classes):
        raise ValueError(f"the classes of {train.where} and {val.where} differ")
    train, val = train.subset(args.max_train_images), val.subset(args.max_val_images)
    if args.skip_bad_images:
        train, val = (data.without_bad_images(s, world=dist.world, rank=dist.rank, workers=args.workers,
                                              all_sum=dist.all_sum) for s in (train, val))
        for split in (train, val):
            if split.skipped and dist.main:
                print(data.describe_skipped(split), flush=True)
    loop = Loop(dist, accum_steps=args.total_batch_size // (args.batch_size * dist.world),
                batch_size=args.batch_size, save_every=args.save_every, amp=args.amp,
                tensorboard=args.tensorboard, progress=args.progress)
    run = Run(args, dist, loop, Path(args.output) / f"{args.model}-f{args.factor}", train, val)
    check_inputs(run)
    return run


def refused(message: str, dist: Dist) -> int:
    """Bad input found before any work: every process checks the same input, so rank 0 reports it;
    another process reports only what rank 0 did not find (a file system that differs per node)."""
    if dist.main:
        report(message)  # before announcing: the others then exit, and torchrun ends this process
        dist.announce_failure(f"rank 0 found bad input: {message}")
        return 2
    dist.announce_failure(f"rank {dist.rank} found bad input: {message}")
    if dist.failure_of(0, SAME_ERROR_WAIT) != f"rank 0 found bad input: {message}":
        report(message, dist)
    return 2


def stopped(err: Exception, dist: Dist) -> int:
    """An error during training: bad input found by this process (its share of the images) is one
    line and exit 2; a failure caused by another process's stopping is one line; anything else is
    announced to the other processes and raised again (its traceback is the report)."""
    peer = dist.peer_failure()
    if peer is not None and not isinstance(err, InputError):
        report(f"stopped because {peer} (its error is printed above)", dist)
        return PEER_FAILED
    if isinstance(err, InputError):
        report(one_line(err), dist)
        dist.announce_failure(f"rank {dist.rank} found bad input")
        return 2
    dist.announce_failure(f"rank {dist.rank} failed ({type(err).__name__})")
    raise err


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except ValueError as err:
        if int(os.environ.get("RANK", 0)) == 0:  # every process parses the same flags
            report(str(err))
        return 2
    dist = setup(args.device)
    try:
        try:
            run = prepare(args, dist)
        except ValueError as err:
            return refused(one_line(err), dist)
        try:
            summary = train_stages(run)
        except Exception as err:
            return stopped(err, dist)
    finally:
        teardown(dist)
    if dist.main:
        print("\n" + summary["table"])
        print(f"outputs: {run.folder}/ (summary.json, summary.csv, one folder per stage with log.jsonl and tb/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
