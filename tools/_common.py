"""Shared command-line pieces of the tools: refusing bad flags, building a model from flags.

Every refusal goes through :func:`fail`: one ``error: ...`` line on stderr naming the flag, exit status
2 (argparse's own status for bad flags), raised before anything heavy is loaded.
"""
from __future__ import annotations

import argparse
import difflib
import math
import sys
from typing import NoReturn

import yaml

import sttabt  # noqa: F401  (registers the models; fixes torchvision first)
import timm
import torch

from sttabt.pruners import PRUNERS, BacktrackPruner, ConcretePruner, ManualTopKPruner, create_pruner
from sttabt.pruners.cls_topk import EViTPruner
from sttabt.pruners.online import EViTOnlinePruner, LTPPruner
from sttabt.registry import HOSTS

DEFAULT_MODEL = "sttabt_deit_small"
DEFAULT_FACTOR = 4
TOPK_PRUNERS = ("abt", "abt_oracle", "manual", "evit_scout", "evit")
CLOSE_MATCHES = 5            # names suggested for an unknown --model
CLOSE_CUTOFF = 0.6           # difflib similarity they need
DEVICES = ("cpu", "cuda")
OWN_FLAGS = {"img_size": "--img-size", "num_classes": "--num-classes", "factor": "--factor", "pruner": "--pruner",
             "keep": "--keep", "p_logit": "--p-logit", "budget": "--budget", "pretrained": None}


class UsageError(SystemExit):
    """Exit status 2 for a bad flag or input; ``str()`` is the message (already printed by :func:`fail`)."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with status 2."""
    print(f"error: {message}", file=sys.stderr)
    raise UsageError(message)


def check_counts(args: argparse.Namespace, minimums: dict[str, int]) -> None:
    """Refuse every flag of ``minimums`` (attribute name -> least value) that is set below its least value."""
    for name, least in minimums.items():
        value = getattr(args, name, None)
        if value is not None and value < least:
            what = "a positive number" if least == 1 else f"at least {least}"
            fail(f"--{name.replace('_', '-')} must be {what}, got {value}")


def check_device(name: str) -> torch.device:
    """``--device``: cpu or cuda (cuda:N), refused when it does not exist on this machine."""
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        fail(f"--device {name!r} is not a device name; use cpu or cuda (cuda:N for the N-th GPU)")
    if device.type not in DEVICES:
        fail(f"--device {name}: the tools run on cpu or cuda, not {device.type}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            fail(f"--device {name} but no CUDA device is visible; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            fail(f"--device {name} but only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="registered STTABT model (sttabt_deit_small, sttabt_lvvit_small, ...) or any "
                        "dense timm ViT with a class token (deit_small_patch16_224, lvvit_small, ...), which is "
                        "wrapped with sttabt.wrap and the pruner of the flags below, exactly as its sttabt_ "
                        f"name would be (default: the --checkpoint's, else {DEFAULT_MODEL})")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--keep", type=float, help="keep ratio per layer of a top-k pruner (default pruner: abt)")
    group.add_argument("--p-logit", type=float, help="p-logit of the concrete pruner (target keep sigmoid(v))")
    parser.add_argument("--pruner", choices=sorted(PRUNERS), help="override the pruner")
    parser.add_argument("--budget", choices=["fixed", "per_sample", "static"],
                        help="batching mode (default: the pruner's; static: counts fixed ahead, batch-invariant)")
    parser.add_argument("--factor", type=int, help=f"the scout is this many times thinner (default {DEFAULT_FACTOR})")
    parser.add_argument("--checkpoint", help="STTABT checkpoint (sttabt.save_checkpoint, e.g. a training run's "
                        "concrete/p_logit_<v>/model.pth) to load; it knows its own shape and runs with its own "
                        "pruner (trained p-logits or keep ratios) unless --pruner, --keep or --p-logit ask otherwise")
    parser.add_argument("--teacher-checkpoint", help="dense teacher weights (timm DeiT or LV-ViT reference)")
    parser.add_argument("--img-size", type=int, help="image size, if not the model's default")
    parser.add_argument("--num-classes", type=int, help="classes, if not the model's default")
    parser.add_argument("--model-kwargs", nargs="+", default=[], metavar="KEY=VALUE",
                        help="more keyword arguments of timm.create_model, e.g. depth=6 embed_dim=192 num_heads=3 "
                        "(values read as YAML: numbers, true/false, null, strings)")


def parse_model_kwargs(items: list[str]) -> dict:
    """``--model-kwargs KEY=VALUE ...`` as a dict (values read as YAML scalars)."""
    kwargs = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            fail(f"--model-kwargs takes KEY=VALUE pairs (e.g. depth=6), got {item!r}")
        if key in OWN_FLAGS:
            fail(f"--model-kwargs {key}: " + (f"use {OWN_FLAGS[key]}" if OWN_FLAGS[key] else "weights are never "
                 "downloaded; load them with --checkpoint or --teacher-checkpoint"))
        try:
            kwargs[key] = yaml.safe_load(text) if text else ""
        except yaml.YAMLError:
            fail(f"--model-kwargs {key}: cannot read the value {text!r}")
    return kwargs


def check_model_args(args: argparse.Namespace) -> None:
    """The flags of :func:`add_model_args`, before any model is built."""
    if args.keep is not None and not 0.0 < args.keep <= 1.0:
        fail(f"--keep is a keep ratio in (0, 1], got {args.keep}")
    if args.p_logit is not None and not math.isfinite(args.p_logit):
        fail(f"--p-logit must be a finite number, got {args.p_logit}")
    if args.pruner == "concrete" and args.keep is not None:
        fail("--keep is a top-k pruners' ratio; the concrete pruner takes --p-logit (target keep sigmoid(v))")
    if args.pruner in TOPK_PRUNERS and args.p_logit is not None:
        fail(f"--p-logit is the concrete pruner's; --pruner {args.pruner} takes --keep")
    check_counts(args, {"factor": 1, "img_size": 1, "num_classes": 1})
    args.model_kwargs = parse_model_kwargs(args.model_kwargs) if isinstance(args.model_kwargs, list) \
        else args.model_kwargs
    if args.checkpoint and args.model_kwargs:
        fail("--model-kwargs with --checkpoint: the checkpoint rebuilds its own shape; drop --model-kwargs")
    if args.model is not None and not args.checkpoint:
        model_kind(args.model)


def model_kind(name: str) -> str:
    """``"sttabt"`` for a registered STTABT model, ``"dense"`` for another timm model (to be wrapped);
    an unknown name fails, naming the closest registered names."""
    if name in timm.list_models("sttabt_*"):
        return "sttabt"
    names = timm.list_models()
    if name in names:
        return "dense"
    close = difflib.get_close_matches(name, names, n=CLOSE_MATCHES, cutoff=CLOSE_CUTOFF)
    hint = f"close matches: {', '.join(close)}" if close else \
        f"STTABT models: {', '.join(timm.list_models('sttabt_*'))}, or any timm ViT with a class token"
    fail(f"unknown model {name!r} for --model; {hint}")


def pruner_name(args: argparse.Namespace) -> str:
    """The pruner the flags of :func:`add_model_args` choose: ``--pruner``, else concrete unless only
    ``--keep`` is given (then abt)."""
    return args.pruner or ("concrete" if args.p_logit is not None or args.keep is None else "abt")


def pruner_kind(pruner) -> str:
    """The ``PRUNERS`` name of a pruner module."""
    if isinstance(pruner, ConcretePruner):
        return "concrete"
    if isinstance(pruner, BacktrackPruner):
        return "abt_oracle" if pruner.source == "actual" else "abt"
    if isinstance(pruner, ManualTopKPruner):
        return "manual"
    if isinstance(pruner, EViTPruner):
        return "evit_scout"
    if isinstance(pruner, EViTOnlinePruner):
        return "evit"
    if isinstance(pruner, LTPPruner):
        return "ltp"
    return type(pruner).__name__


def pruner_report(pruner) -> dict:
    """What a report says about the pruner that ran: its name and its p-logits or keep ratios."""
    out = {"pruner": type(pruner).__name__, "pruner_name": pruner_kind(pruner)}
    if isinstance(pruner, ConcretePruner):
        out["p_logits"] = [round(v, 6) for v in pruner.p_logits.detach().cpu().tolist()]
    elif hasattr(pruner, "keep"):
        out["keep_schedule"] = [round(k, 6) for k in pruner.keep]
    return out


def checkpoint_pruner(args: argparse.Namespace, model):
    """The pruner to run a checkpoint's model with: its own, trained p-logits or keep ratios untouched,
    unless a flag asks for another: ``--p-logit`` re-targets a concrete pruner, ``--keep`` re-sets the
    ratio of the checkpoint's top-k pruner (or builds an abt one), ``--pruner`` picks any pruner."""
    own = pruner_kind(model.pruner)
    if args.pruner is None and args.keep is None and args.p_logit is None:
        return model.pruner
    if args.pruner:
        name = args.pruner
    elif args.p_logit is not None:
        name = "concrete"
    else:
        name = own if own in TOPK_PRUNERS else "abt"
    if name == "concrete":
        if own == "concrete":
            if args.p_logit is not None:
                model.pruner.set_p_logit(args.p_logit)  # re-target the trained pruner
            return model.pruner
        return create_pruner("concrete", model.depth, p_logit=args.p_logit or 0.0)
    if name == own and args.keep is None:
        return model.pruner
    return create_pruner(name, model.depth, keep=args.keep)


def _from_checkpoint(args: argparse.Namespace):
    """The model a checkpoint rebuilds (its architecture and keyword arguments are stored in it) with
    the pruner :func:`checkpoint_pruner` chooses."""
    model = sttabt.create_from_checkpoint(args.checkpoint)
    arch = model.pretrained_cfg.get("architecture")
    stored = {"--model": arch, "--factor": None if model.scout is None else model.scout.factor,
              "--img-size": model.host.patch_embed.img_size[0], "--num-classes": model.num_classes}
    asked = {"--model": args.model, "--factor": args.factor, "--img-size": args.img_size,
             "--num-classes": args.num_classes}
    if args.model is not None and HOSTS.get(arch) == args.model:  # the host's own timm name: the same model
        asked["--model"] = arch
    for flag, value in asked.items():
        if value is not None and stored[flag] is not None and value != stored[flag]:
            fail(f"{flag} {value} but the checkpoint holds {stored[flag]}; drop {flag} or pass {stored[flag]}")
    args.model, args.factor = stored["--model"], stored["--factor"]
    pruner = checkpoint_pruner(args, model)
    if pruner is not model.pruner:
        model = sttabt.STTABT(model.host, model.scout, pruner, model.budget)
    if args.budget:
        model.budget = args.budget
    return model.eval()


def _wrap_options(args: argparse.Namespace) -> dict:
    options = dict(factor=args.factor, pruner=pruner_name(args), budget=args.budget)
    if args.keep is not None:
        options["keep"] = args.keep
    if args.p_logit is not None:
        options["p_logit"] = args.p_logit
    return options


def build_model(args: argparse.Namespace):
    """An STTABT model in eval mode from the flags of :func:`add_model_args` (checked here first). A
    dense timm name is built dense and wrapped with :func:`sttabt.wrap` and the pruner of the flags."""
    check_model_args(args)
    try:
        if args.checkpoint:
            return _from_checkpoint(args)
        args.model = args.model or DEFAULT_MODEL
        args.factor = args.factor or DEFAULT_FACTOR
        size = {k: v for k, v in (("img_size", args.img_size), ("num_classes", args.num_classes)) if v}
        size.update(args.model_kwargs)
        try:
            if model_kind(args.model) == "sttabt":
                model = timm.create_model(args.model, **size, **_wrap_options(args))
            else:
                host = timm.create_model(args.model, pretrained=False, **size)
                model = sttabt.wrap(host, **_wrap_options(args))
        except TypeError as err:  # an argument the model's constructor does not take
            fail(f"--model {args.model}: {err}; pass only arguments its constructor takes (--model-kwargs), and "
                 "a timm ViT with a class token (what sttabt.wrap runs)")
        if args.teacher_checkpoint:
            sttabt.load_teacher(model, args.teacher_checkpoint)
    except ValueError as err:
        fail(f"--model {args.model}: {err}" if not args.checkpoint else str(err))
    return model.eval()
