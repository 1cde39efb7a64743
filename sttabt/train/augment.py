"""Augmentation from timm: the transforms of each stage and the Mixup / CutMix batch mixing."""
from __future__ import annotations

import argparse
from typing import Callable, Iterator

from timm.data import Mixup, create_transform

POSTERIZE_OPS = ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")


def posterize(img, bits_to_keep, **_):
    """timm's posterize with Pillow's old meaning of 0 bits (an all-black image): Pillow 13 refuses 0
    bits, which timm's ``PosterizeIncreasing`` asks for at high magnitudes (``rand-m9-mstd0.5-inc1``)."""
    from PIL import ImageOps

    bits = int(bits_to_keep)
    if bits >= 8:
        return img
    if bits <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits)


def _augment_ops(transform) -> Iterator:
    """timm's ``AugmentOp`` objects anywhere in a composed transform (RandAugment, AutoAugment, AugMix)."""
    from timm.data.auto_augment import AugmentOp

    stack, seen = [transform], set()
    while stack:
        t = stack.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        if isinstance(t, AugmentOp):
            yield t
            continue
        for name in ("transforms", "ops", "policy"):
            children = getattr(t, name, None)
            if isinstance(children, (list, tuple)):
                stack.extend(children)
        if isinstance(t, (list, tuple)):
            stack.extend(t)


def with_safe_posterize(transform: Callable) -> Callable:
    """The same transform, its posterize ops (this object's only: timm is not patched) using
    :func:`posterize`."""
    for op in _augment_ops(transform):
        if op.name in POSTERIZE_OPS:
            op.aug_fn = posterize
    return transform


def train_transform(args: argparse.Namespace, stage: str) -> Callable:
    """Distillation (``approx``): random resized crop, flip and colour jitter only (section 3.1);
    teacher and concrete stages: the DeiT recipe (RandAugment, random erasing)."""
    common = dict(input_size=args.img_size, is_training=True, scale=tuple(args.scale),
                  interpolation=args.interpolation, color_jitter=args.color_jitter, hflip=args.hflip)
    if stage == "approx":
        return create_transform(**common)
    return with_safe_posterize(create_transform(**common, auto_augment=args.aa or None, re_prob=args.reprob,
                                                re_mode="pixel", re_count=1))


def eval_transform(args: argparse.Namespace) -> Callable:
    return create_transform(input_size=args.img_size, is_training=False, interpolation=args.interpolation,
                            crop_pct=args.crop_pct)


def mixup(args: argparse.Namespace, num_classes: int) -> Mixup | None:
    """timm's Mixup (with label smoothing folded into the soft targets), or None when both are off."""
    if args.mixup <= 0 and args.cutmix <= 0:
        return None
    return Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, prob=args.mixup_prob,
                 switch_prob=args.mixup_switch_prob, label_smoothing=args.smoothing, num_classes=num_classes)
