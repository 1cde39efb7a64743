"""Command line of ``tools/train_imagenet.py``: flags, YAML configs and the checks made before any
work starts. Every flag can be set in the YAML file named by ``--config`` (its keys are the flag
names with ``_`` for ``-``); flags given on the command line win over the file."""
from __future__ import annotations

import argparse
import math
import os
import re

import yaml

from .checks import check_flags

DEFAULT_P_LOGITS = "-1.5 -1.0 -0.5 0.0 1.0"


DEFAULT_THRESHOLDS = "0.01"


def parse_p_logits(text: str | list | tuple | float, flag: str = "--p-logits",
                   example: str = DEFAULT_P_LOGITS) -> list[float]:
    """``"-1.5 -1.0, 0"`` (or a YAML list) -> ``[-1.5, -1.0, 0.0]``; anything else is refused.
    ``flag`` and ``example`` name another list of numbers in the messages (``--thresholds``)."""
    if isinstance(text, (int, float)):
        items = [text]
    elif isinstance(text, (list, tuple)):
        items = [t for item in text for t in (re.split(r"[\s,]+", item.strip()) if isinstance(item, str) else [item])]
    else:
        items = re.split(r"[\s,]+", str(text).strip())
    values = []
    for item in items:
        if item == "":
            continue
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise ValueError(f"{flag} must be numbers separated by spaces or commas, e.g. "
                             f"\"{example}\"; {item!r} is not a number") from None
        if not math.isfinite(value):
            raise ValueError(f"{flag} must be finite numbers, got {item!r}")
        values.append(value)
    if not values:
        raise ValueError(f"{flag} is empty; give at least one value, e.g. \"{example}\"")
    if len(set(values)) != len(values):
        raise ValueError(f"{flag} repeats a value: {values}")
    return values


class _Kwargs(argparse.Action):
    """``--model-kwargs depth=6 embed_dim=192`` -> dict, values read as YAML scalars."""

    def __call__(self, parser, namespace, values, option_string=None):
        kwargs = dict(getattr(namespace, self.dest) or {})
        for item in values:
            key, sep, value = item.partition("=")
            if not sep:
                parser.error(f"{option_string} takes key=value pairs, got {item!r}")
            kwargs[key] = yaml.safe_load(value)
        setattr(namespace, self.dest, kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="STTABT end to end: dense teacher (optional), approximation network (scout) "
                    "distillation, then one concrete-masking model per p-logit. Runs as one process or "
                    "under torchrun (DDP).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-c", "--config", help="YAML file of flag values (configs/NAME.yaml)")
    g = p.add_argument_group("model")
    g.add_argument("--model", default="sttabt_deit_small", help="registered STTABT model")
    g.add_argument("--model-kwargs", nargs="*", action=_Kwargs, default={}, metavar="KEY=VALUE",
                   help="more keyword arguments of the host, e.g. depth=6 embed_dim=192 num_heads=3 patch_size=4")
    g.add_argument("--img-size", type=int, default=224, help="input image size")
    g.add_argument("--factor", type=int, default=4, help="the scout is this many times thinner than the host")
    g.add_argument("--drop-path", type=float, default=0.1, help="stochastic depth rate of the host")
    g.add_argument("--teacher-checkpoint", help="dense teacher weights; without it a teacher is trained first")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="imagefolder", choices=["imagefolder", "digits"],
                   help="an ImageFolder tree (ImageNet layout) or scikit-learn's bundled digits")
    g.add_argument("--data-path", "--imagenet-root", dest="data_path", default=os.environ.get("IMAGENET_ROOT"),
                   help="ROOT holding ROOT/<split>/<class>/<image> (default: $IMAGENET_ROOT)")
    g.add_argument("--train-split", default="train")
    g.add_argument("--val-split", default="val")
    g.add_argument("--workers", type=int, default=4, help="data loader processes per training process")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="decode every image once before training and leave out (and count) those that fail; "
                        "without it a corrupt image stops the run, naming the file")
    g = p.add_argument_group("stages")
    g.add_argument("--p-logits", nargs="+", default=[DEFAULT_P_LOGITS],
                   help="one concrete model per value; target keep ratio sigmoid(v)")
    g.add_argument("--skip-approx", action="store_true",
                   help="reuse the approximation network already in the output folder")
    g.add_argument("--teacher-epochs", type=int, default=300, help="epochs of the dense teacher, when trained here")
    g.add_argument("--teacher-lr", type=float, default=5e-4, help="teacher peak learning rate at batch 512")
    g.add_argument("--teacher-warmup-epochs", type=int, default=5)
    g.add_argument("--teacher-weight-decay", type=float, default=0.05)
    g.add_argument("--approx-epochs", type=int, default=30, help="epochs of scout distillation")
    g.add_argument("--approx-lr", type=float, default=1e-4, help="scout learning rate (constant, AdamW)")
    g.add_argument("--approx-clip-grad", type=float, default=0.5)
    g.add_argument("--epochs", type=int, default=20, help="epochs of concrete fine-tuning per p-logit")
    g.add_argument("--warmup-epochs", type=int, default=14, help="warm-up epochs of concrete fine-tuning")
    g.add_argument("--lr", type=float, default=1e-5, help="concrete fine-tuning peak learning rate")
    g.add_argument("--min-lr", type=float, default=5e-7)
    g.add_argument("--weight-decay", type=float, default=0.05, help="none on biases, norms and p-logits")
    g.add_argument("--kd-weight", type=float, default=0.5, help="weight of KL(teacher || student logits)")
    g.add_argument("--model-ema-decay", type=float, default=0.9999, help="EMA decay (0: no EMA)")
    g.add_argument("--dense-control", action="store_true",
                   help="also fine-tune the dense teacher like the concrete stage (same epochs, lr and KD, no "
                        "masks) and report it next to the concrete rows")
    g = p.add_argument_group("LTP (--pruner ltp: learned thresholds, no scout; see sttabt.train.ltp)")
    g.add_argument("--pruner", default="concrete", choices=["concrete", "ltp"],
                   help="concrete: STTABT (scout + concrete masks, one model per --p-logits value); ltp: learned "
                        "token pruning, a soft (--epochs, --lr) then a hard stage per --thresholds value")
    g.add_argument("--thresholds", nargs="+", default=[DEFAULT_THRESHOLDS],
                   help="LTP final token thresholds, one model each (a uniform attention map scores 1 / T)")
    g.add_argument("--ltp-temperature", type=float, default=1e-3, help="T of LTP's soft masks")
    g.add_argument("--ltp-lambda", type=float, default=0.1, help="weight of LTP's sum_l mean(mask_l)")
    g.add_argument("--hard-epochs", type=int, default=5, help="epochs of LTP's hard stage (thresholds frozen)")
    g.add_argument("--hard-lr", type=float, default=1e-5, help="peak learning rate of LTP's hard stage")
    g = p.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=64, help="images per process and step")
    g.add_argument("--total-batch-size", type=int, default=512,
                   help="images per optimiser update, reached by gradient accumulation")
    g.add_argument("--amp", action="store_true", help="bfloat16 autocast (on the run's device, CPU included)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda:LOCAL_RANK when available)")
    g = p.add_argument_group("augmentation (timm)")
    g.add_argument("--aa", default="rand-m9-mstd0.5-inc1", help="RandAugment policy ('' for none)")
    g.add_argument("--reprob", type=float, default=0.25, help="random erasing probability")
    g.add_argument("--mixup", type=float, default=0.8)
    g.add_argument("--cutmix", type=float, default=1.0)
    g.add_argument("--mixup-prob", type=float, default=1.0)
    g.add_argument("--mixup-switch-prob", type=float, default=0.5)
    g.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    g.add_argument("--color-jitter", type=float, default=0.4)
    g.add_argument("--scale", type=float, nargs=2, default=[0.08, 1.0], help="random resized crop scale")
    g.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability")
    g.add_argument("--interpolation", default="bicubic")
    g.add_argument("--crop-pct", type=float, default=0.875, help="evaluation centre crop share")
    g = p.add_argument_group("output")
    g.add_argument("--output", default="output", help="runs go to OUTPUT/<model>-f<factor>/")
    g.add_argument("--auto-resume", action="store_true",
                   help="continue each stage from its last complete checkpoint and skip finished ones")
    g.add_argument("--save-every", type=int, default=0,
                   help="also checkpoint every this many optimiser steps (0: at the end of each epoch)")
    g.add_argument("--max-train-images", type=int, default=0, help="use only the first N training images (0: all)")
    g.add_argument("--max-val-images", type=int, default=0, help="use only the first N validation images (0: all)")
    g.add_argument("--no-speed", dest="speed", action="store_false",
                   help="do not time the concrete models against the dense one at the end (summary 'speedup')")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no tqdm bars")
    return p


def load_config(path: str, parser: argparse.ArgumentParser) -> dict:
    if not os.path.isfile(path):
        raise ValueError(f"config file not found: {path}")
    with open(path) as f:
        config = yaml.safe_load(f) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping of flag names to values")
    known = {a.dest for a in parser._actions}
    config = {k.replace("-", "_"): v for k, v in config.items()}
    unknown = sorted(set(config) - known - {"config"})
    if unknown:
        raise ValueError(f"{path}: unknown keys {', '.join(unknown)} (keys are flag names, e.g. p_logits, batch_size)")
    return config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags over config over defaults, then checked (``ValueError`` says what to change)."""
    parser = build_parser()
    first, _ = parser.parse_known_args(argv)
    if first.config:
        parser.set_defaults(**load_config(first.config, parser))
    args = parser.parse_args(argv)
    args.p_logits = parse_p_logits(args.p_logits)
    args.thresholds = parse_p_logits(args.thresholds, "--thresholds", DEFAULT_THRESHOLDS)
    check_flags(args)
    if args.dataset == "digits" and args.data_path and not os.environ.get("IMAGENET_ROOT") == args.data_path:
        raise ValueError("--dataset digits reads scikit-learn's bundled digits; drop --data-path")
    return args
