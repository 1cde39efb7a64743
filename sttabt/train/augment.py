"""Augmentation from timm: the transforms of each stage and the Mixup / CutMix batch mixing."""
from __future__ import annotations

import argparse
from typing import Callable

from timm.data import Mixup, create_transform


def train_transform(args: argparse.Namespace, stage: str) -> Callable:
    """Distillation (``approx``): random resized crop, flip and colour jitter only (section 3.1);
    teacher and concrete stages: the DeiT recipe (RandAugment, random erasing)."""
    common = dict(input_size=args.img_size, is_training=True, scale=tuple(args.scale),
                  interpolation=args.interpolation, color_jitter=args.color_jitter, hflip=args.hflip)
    if stage == "approx":
        return create_transform(**common)
    return create_transform(**common, auto_augment=args.aa or None, re_prob=args.reprob,
                            re_mode="pixel", re_count=1)


def eval_transform(args: argparse.Namespace) -> Callable:
    return create_transform(input_size=args.img_size, is_training=False, interpolation=args.interpolation,
                            crop_pct=args.crop_pct)


def mixup(args: argparse.Namespace, num_classes: int) -> Mixup | None:
    """timm's Mixup (with label smoothing folded into the soft targets), or None when both are off."""
    if args.mixup <= 0 and args.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                 switch_prob=args.mixup_switch_prob, label_smoothing=args.smoothing, num_classes=num_classes)
