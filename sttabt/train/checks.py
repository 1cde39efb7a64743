"""The checks of flag values made by :func:`sttabt.train.parse_args`, before any work starts: each
refusal names the flag and says what to do (``ValueError``, one line)."""
from __future__ import annotations

import argparse
import inspect
import math

import torch

POSITIVE_INTS = ("batch_size", "total_batch_size", "factor", "img_size")
NON_NEGATIVE_INTS = ("epochs", "warmup_epochs", "approx_epochs", "teacher_epochs", "teacher_warmup_epochs",
                     "max_train_images", "max_val_images", "workers", "save_every", "hard_epochs")
LEARNING_RATES = ("lr", "min_lr", "teacher_lr", "approx_lr", "hard_lr")
NON_NEGATIVE_FLOATS = ("weight_decay", "teacher_weight_decay", "approx_clip_grad", "kd_weight", "mixup",
                       "cutmix", "drop_path", "ltp_lambda")
PROBABILITIES = ("reprob", "mixup_prob", "mixup_switch_prob", "smoothing", "hflip", "model_ema_decay",
                 "color_jitter")
# keyword arguments of the model that other flags (or the data) set
SET_BY_FLAGS = {"img_size": "--img-size", "num_classes": "the number of classes of the data",
                "drop_path_rate": "--drop-path", "factor": "--factor", "pruner": "--pruner",
                "p_logit": "--p-logits", "threshold": "--thresholds"}
WRAP_KWARGS = ("keep", "budget", "scout_init")
POSITIVE_MODEL_KWARGS = ("depth", "embed_dim", "num_heads", "patch_size", "mlp_ratio", "in_chans")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check_numbers(args: argparse.Namespace) -> None:
    for name in POSITIVE_INTS:
        if getattr(args, name) <= 0:
            raise ValueError(f"{flag(name)} must be a positive whole number, got {getattr(args, name)}")
    for name in NON_NEGATIVE_INTS:
        value = getattr(args, name)
        if value < 0:
            hint = " (0 means all)" if name.startswith("max_") else ""
            raise ValueError(f"{flag(name)} must be >= 0{hint}, got {value}")
    for name in LEARNING_RATES:
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{flag(name)} must be a finite learning rate >= 0, got {value}")
    for name in NON_NEGATIVE_FLOATS:
        value = getattr(args, name)
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{flag(name)} must be a finite number >= 0, got {value}")
    for name in PROBABILITIES:
        value = getattr(args, name)
        if not 0 <= value <= 1:  # also refuses NaN
            raise ValueError(f"{flag(name)} must lie in [0, 1], got {value}")
    low, high = args.scale
    if not 0 < low <= high <= 1:
        raise ValueError(f"--scale takes two numbers 0 < LOW <= HIGH <= 1, got {low} {high}")
    if not 0 < args.crop_pct <= 1:
        raise ValueError(f"--crop-pct must lie in (0, 1], got {args.crop_pct}")
    if args.total_batch_size % args.batch_size:
        raise ValueError(f"--total-batch-size {args.total_batch_size} is not a multiple of --batch-size "
                         f"{args.batch_size}")
    if not args.ltp_temperature > 0:
        raise ValueError(f"--ltp-temperature must be > 0, got {args.ltp_temperature}")
    if min(args.thresholds) < 0:
        raise ValueError(f"--thresholds must be >= 0 (attention a token receives), got {args.thresholds}")
    if args.warmup_epochs > args.epochs:
        raise ValueError(f"--warmup-epochs {args.warmup_epochs} exceeds --epochs {args.epochs}")


def host_keywords(model: str) -> set[str]:
    """Keyword arguments the host of a registered STTABT model accepts (timm's VisionTransformer,
    and LV-ViT's own)."""
    from timm.models.vision_transformer import VisionTransformer

    from ..models.lvvit import LVViT
    from ..registry import HOSTS

    classes = [VisionTransformer] + ([LVViT] if "lvvit" in HOSTS.get(model, "") else [])
    names = {p for c in classes for p in inspect.signature(c.__init__).parameters}
    return names - {"self", "kwargs", "device", "dtype"}


def check_model_kwargs(model: str, kwargs: dict) -> None:
    valid = (host_keywords(model) | set(WRAP_KWARGS)) - set(SET_BY_FLAGS)
    for key in kwargs:
        if key in SET_BY_FLAGS:
            raise ValueError(f"--model-kwargs {key}: set by {SET_BY_FLAGS[key]}, not here")
    unknown = sorted(set(kwargs) - valid)
    if unknown:
        raise ValueError(f"--model-kwargs: unknown keys {', '.join(unknown)}; valid keys of {model}: "
                         f"{', '.join(sorted(valid))}")
    for key in POSITIVE_MODEL_KWARGS:
        value = kwargs.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
            raise ValueError(f"--model-kwargs {key}={value!r}: must be a positive number")


def check_device(device: str | None) -> None:
    if device is None:
        return
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: no CUDA GPU is available here (torch.cuda.is_available() "
                             "is False); use --device cpu, or leave --device out")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s), "
                             f"cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    elif parsed.type != "cpu":
        raise ValueError(f"--device {device}: training runs on cpu or cuda")


def check_flags(args: argparse.Namespace) -> None:
    """Every value check; the first problem raises ``ValueError``."""
    _check_numbers(args)
    check_model_kwargs(args.model, args.model_kwargs)
    check_device(args.device)
