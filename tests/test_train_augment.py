"""The default training augmentation (the DeiT recipe, ``rand-m9-mstd0.5-inc1``) with the installed
timm and Pillow: timm's PosterizeIncreasing asks for 0 bits now and then, which Pillow 13 refuses."""
import random

import numpy as np
import pytest
from PIL import Image, ImageOps

from conftest import SHARED_DATA  # noqa: F401  (also makes sure sttabt is imported)
from sttabt.train import augment, parse_args

SEEDS = 3000  # ~1 in 2,000 RandAugment calls asked for 0 bits before the fix


def test_posterize_keeps_pillows_old_meaning_of_zero_bits():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    assert not np.asarray(augment.posterize(image, 0)).any(), "0 bits: an all-black image"
    assert augment.posterize(image, 0).mode == image.mode
    assert augment.posterize(image, 8) is image
    assert np.array_equal(np.asarray(augment.posterize(image, 3)), np.asarray(ImageOps.posterize(image, 3)))


def test_default_randaugment_runs_over_many_seeds():
    from timm.data.auto_augment import RandAugment

    args = parse_args(["--dataset", "digits", "--img-size", "16"])
    assert args.aa == "rand-m9-mstd0.5-inc1"
    transform = augment.train_transform(args, "teacher")
    rand_augment = next(t for t in transform.transforms if isinstance(t, RandAugment))
    posterize_ops = [op for op in rand_augment.ops if op.name == "PosterizeIncreasing"]
    assert posterize_ops and all(op.aug_fn is augment.posterize for op in posterize_ops)
    bits_asked = []
    for op in posterize_ops:
        op.aug_fn = lambda img, bits, **kw: (bits_asked.append(bits), augment.posterize(img, bits, **kw))[1]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    for seed in range(SEEDS):
        random.seed(seed)
        assert rand_augment(image).size == image.size
    assert 0 in bits_asked, "the seeds reach the 0-bit case the fix is about"


def test_whole_default_transform_on_a_few_seeds_and_timm_left_alone():
    import timm.data.auto_augment as timm_aa
    import torch

    args = parse_args(["--dataset", "digits", "--img-size", "16"])
    transform = augment.train_transform(args, "teacher")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    for seed in range(50):
        random.seed(seed)
        torch.manual_seed(seed)
        assert transform(image).shape == (3, 16, 16)
    assert timm_aa.NAME_TO_OP["PosterizeIncreasing"] is timm_aa.posterize, "timm itself is not patched"


@pytest.mark.parametrize("policy", ["original", "augmix-m5-w4-d2"])
def test_other_policies_get_the_safe_posterize_too(policy):
    args = parse_args(["--dataset", "digits", "--img-size", "16", "--aa", policy])
    ops = list(augment._augment_ops(augment.train_transform(args, "teacher")))
    assert any(op.name in augment.POSTERIZE_OPS for op in ops)
    assert all(op.aug_fn is augment.posterize for op in ops if op.name in augment.POSTERIZE_OPS)
