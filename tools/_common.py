"""Shared command-line pieces of the tools: building a model from flags."""
from __future__ import annotations

import argparse
import math

import sttabt  # noqa: F401  (registers the models; fixes torchvision first)
import timm

from sttabt.pruners import PRUNERS, ConcretePruner, create_pruner

DEFAULT_MODEL = "sttabt_deit_small"


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="registered STTABT model, e.g. sttabt_deit_small, sttabt_lvvit_small "
                        f"(default: the --checkpoint's, else {DEFAULT_MODEL})")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--keep", type=float, help="keep ratio per layer of a top-k pruner (default pruner: abt)")
    group.add_argument("--p-logit", type=float, help="p-logit of the concrete pruner (target keep sigmoid(v))")
    parser.add_argument("--pruner", choices=sorted(PRUNERS), help="override the pruner")
    parser.add_argument("--budget", choices=["fixed", "per_sample"], help="batching mode (default: the pruner's)")
    parser.add_argument("--factor", type=int, help="the scout is this many times thinner (default 4)")
    parser.add_argument("--checkpoint", help="STTABT checkpoint (sttabt.save_checkpoint, e.g. a training run's "
                        "concrete/p_logit_<v>/model.pth) to load; it knows its own shape")
    parser.add_argument("--teacher-checkpoint", help="dense teacher weights (timm DeiT or LV-ViT reference)")
    parser.add_argument("--img-size", type=int, help="image size, if not the model's default")
    parser.add_argument("--num-classes", type=int, help="classes, if not the model's default")


def pruner_name(args: argparse.Namespace) -> str:
    """The pruner the flags of :func:`add_model_args` choose: ``--pruner``, else concrete unless only
    ``--keep`` is given (then abt)."""
    return args.pruner or ("concrete" if args.p_logit is not None or args.keep is None else "abt")


def _from_checkpoint(args: argparse.Namespace):
    """The model a checkpoint rebuilds (its architecture and keyword arguments are stored in it), with
    the pruner the flags ask for in place of its own when they ask for one."""
    model = sttabt.create_from_checkpoint(args.checkpoint)
    stored = {"--model": model.pretrained_cfg.get("architecture"), "--factor": model.scout.factor,
              "--img-size": model.host.patch_embed.img_size[0], "--num-classes": model.num_classes}
    asked = {"--model": args.model, "--factor": args.factor, "--img-size": args.img_size,
             "--num-classes": args.num_classes}
    for flag, value in asked.items():
        if value is not None and value != stored[flag]:
            raise SystemExit(f"error: {flag} {value} but the checkpoint holds {stored[flag]}; drop {flag} or pass "
                             f"{stored[flag]}")
    args.model, args.factor = stored["--model"], stored["--factor"]
    name = pruner_name(args)
    if name == "concrete" and isinstance(model.pruner, ConcretePruner):
        if args.p_logit is not None:
            model.pruner.set_p_logit(args.p_logit)        # re-target the trained pruner
    else:
        keep = {} if name == "concrete" else {"keep": args.keep if args.keep is not None else 0.5}
        pruner = create_pruner(name, model.depth, p_logit=args.p_logit or 0.0, **keep)
        model = sttabt.STTABT(model.host, model.scout, pruner, model.budget)
    if args.budget:
        model.budget = args.budget
    return model.eval()


def build_model(args: argparse.Namespace):
    """An STTABT model in eval mode from the flags of :func:`add_model_args`."""
    if args.checkpoint:
        try:
            return _from_checkpoint(args)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
    args.model = args.model or DEFAULT_MODEL
    args.factor = args.factor or 4
    if args.model not in timm.list_models("sttabt_*"):
        raise SystemExit(f"unknown model {args.model!r}; registered: {', '.join(timm.list_models('sttabt_*'))}")
    if args.p_logit is not None and not math.isfinite(args.p_logit):
        raise SystemExit(f"--p-logit must be a finite number, got {args.p_logit}")
    kwargs = dict(factor=args.factor, pruner=pruner_name(args), budget=args.budget)
    if args.keep is not None:
        kwargs["keep"] = args.keep
    if args.p_logit is not None:
        kwargs["p_logit"] = args.p_logit
    if args.img_size:
        kwargs["img_size"] = args.img_size
    if args.num_classes:
        kwargs["num_classes"] = args.num_classes
    try:
        model = timm.create_model(args.model, **kwargs)
        if args.teacher_checkpoint:
            sttabt.load_teacher(model, args.teacher_checkpoint)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    return model.eval()
