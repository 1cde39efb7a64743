"""Training and validation data: ImageFolder trees and the bundled handwritten digits.

Every training sample is augmented under its own seed, derived from ``(seed, epoch, index)``: what an
image looks like does not depend on the number of processes, the number of loader workers or on
where a run was resumed. The sampler hands ``(epoch, index)`` pairs to the dataset, so persistent
workers need no epoch broadcast, and it can skip the part of an epoch a resumed run already did.
"""
from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from .errors import BadImage

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DIGITS_SIZE = 8            # scikit-learn's digits are 8 x 8, 17 grey levels (0..16)
DIGITS_VAL_SHARE = 0.2     # held-out share of the digits, split once with a fixed permutation
DIGITS_SPLIT_SEED = 0
DATASETS = ("imagefolder", "digits")
MIN_CLASSES = 2
LISTED_BAD_IMAGES = 5


@dataclass
class Split:
    """A split before augmentation: ``get(i) -> (PIL image, label)``, ``len``, class names, the name
    of each sample (its file) and the files left out as unreadable (``--skip-bad-images``)."""
    get: Callable[[int], tuple]
    length: int
    classes: Sequence[str]
    where: str
    name: Callable[[int], str] = str
    skipped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return self.length

    def select(self, picked: Sequence[int], where: str, skipped: tuple[str, ...] = ()) -> "Split":
        picked = list(picked)
        return Split(lambda i: self.get(picked[i]), len(picked), self.classes, where,
                     lambda i: self.name(picked[i]), self.skipped + skipped)

    def subset(self, n: int) -> "Split":
        """``n`` images spread evenly over the split (folders are sorted by class, so not the first n)."""
        if not 0 < n < self.length:
            return self
        return self.select([i * self.length // n for i in range(n)], f"{self.where} ({n} of {self.length})")


def read_image(path: str):
    """An image file as RGB; one that cannot be decoded raises :class:`BadImage` naming it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImage(f"cannot read image {path} ({type(err).__name__}: {err}); replace or remove it, or pass "
                       "--skip-bad-images to leave out the files that cannot be read") from None


def _image_folder(root: str, split: str) -> Split:
    from timm.data import ImageDataset

    folder = os.path.join(root, split)
    if not os.path.isdir(root):
        raise ValueError(f"data folder not found: {root} (pass --data-path, or set IMAGENET_ROOT)")
    if not os.path.isdir(folder):
        found = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        raise ValueError(f"no '{split}' split under {root} (found: {', '.join(found) or 'no folders'}); "
                         "the layout is ROOT/<split>/<class>/<image>, choose the splits with "
                         "--train-split / --val-split")
    has_images = any(name.lower().endswith(IMAGE_SUFFIXES) for _, _, names in os.walk(folder) for name in names)
    if not has_images:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    reader = ImageDataset(folder).reader
    classes = sorted(reader.class_to_idx, key=reader.class_to_idx.get)
    if len(classes) < MIN_CLASSES:
        raise ValueError(f"{folder} holds {len(classes)} class folder{'s' * (len(classes) != 1)} "
                         f"({', '.join(classes) or 'images only at the top'}); classification needs at least "
                         f"{MIN_CLASSES}: ROOT/<split>/<class>/<image>, one folder per class")
    samples = list(reader.samples)

    def get(index: int) -> tuple:
        path, target = samples[index]
        return read_image(path), target

    return Split(get, len(samples), classes, folder, lambda i: samples[i][0])


def _digits(split: str) -> Split:
    """scikit-learn's bundled handwritten digits (1,797 real scans) as RGB PIL images, 8 x 8 px;
    the transforms upscale them. ``train`` / ``val`` are a fixed 80 / 20 split."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(DIGITS_SPLIT_SEED).permutation(len(digits.target))
    n_val = round(len(order) * DIGITS_VAL_SHARE)
    if split not in ("train", "val"):
        raise ValueError(f"the digits data set has splits 'train' and 'val', not {split!r}")
    chosen = order[n_val:] if split == "train" else order[:n_val]
    pixels = (digits.images[chosen] * (255 / 16)).round().astype(np.uint8)
    labels = digits.target[chosen].tolist()

    def get(index: int) -> tuple:
        return Image.fromarray(pixels[index]).convert("RGB"), labels[index]

    return Split(get, len(labels), [str(c) for c in range(10)], f"sklearn digits ({split})")


def load_split(dataset: str, root: str | None, split: str) -> Split:
    if dataset == "digits":
        return _digits(split)
    if dataset == "imagefolder":
        if not root:
            raise ValueError("no data folder: pass --data-path (or --imagenet-root, or set IMAGENET_ROOT)")
        return _image_folder(root, split)
    raise ValueError(f"unknown dataset {dataset!r}: choose one of {', '.join(DATASETS)}")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed python, numpy and torch for the block, then put the previous states back."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class Augmented(Dataset):
    """``dataset[(epoch, index)]``: the sample ``index`` transformed under its own seed."""

    def __init__(self, split: Split, transform: Callable, seed: int):
        self.split, self.transform, self.seed = split, transform, seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        image, label = self.split.get(index)
        with seeded(sample_seed(self.seed, epoch, index)):
            return self.transform(image), label


class EpochSampler(Sampler):
    """This process's training samples as ``(epoch, index)`` pairs, micro-batch by micro-batch.

    An optimiser step takes ``M = accum_steps * world`` micro-batches of ``batch_size``. Micro-batch
    slot ``m`` reads the ``m``-th of ``M`` interleaved shards of the epoch's permutation, i.e. a
    :class:`DistributedSampler` with ``M`` replicas and rank ``m``; this process owns the slots
    ``m = a * world + rank`` for its accumulation steps ``a``. So every micro-batch holds the same
    samples whether a step is split over processes or accumulated in one, and losses that are not a
    plain mean over samples (the concrete regulariser) agree too. ``set_epoch(epoch, skip_steps)``
    leaves out the optimiser steps a resumed run has already taken.
    """

    def __init__(self, length: int, *, batch_size: int, accum_steps: int, world: int, rank: int, seed: int):
        slots = accum_steps * world
        self.shards = [DistributedSampler(range(length), num_replicas=slots, rank=a * world + rank, shuffle=True,
                                          seed=seed, drop_last=True) for a in range(accum_steps)]
        self.batch_size, self.epoch, self.skip = batch_size, 0, 0
        self.steps = len(self.shards[0]) // batch_size  # optimiser steps per epoch

    def set_epoch(self, epoch: int, skip_steps: int = 0) -> None:
        self.epoch, self.skip = epoch, skip_steps
        for shard in self.shards:
            shard.set_epoch(epoch)

    def __iter__(self):
        shards, b = [list(s) for s in self.shards], self.batch_size
        for step in range(self.skip, self.steps):
            for shard in shards:
                yield from ((self.epoch, i) for i in shard[step * b:(step + 1) * b])

    def __len__(self) -> int:
        return (self.steps - self.skip) * self.batch_size * len(self.shards)


class Shard(Sampler):
    """Every ``world``-th index from ``rank``, no padding (evaluation sums are reduced exactly)."""

    def __init__(self, length: int, *, world: int, rank: int):
        self.indices = list(range(rank, length, world))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class Transformed(Dataset):
    def __init__(self, split: Split, transform: Callable):
        self.split, self.transform = split, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int):
        image, label = self.split.get(index)
        return self.transform(image), label


def train_loader(split: Split, transform: Callable, *, batch_size: int, accum_steps: int, seed: int, world: int,
                 rank: int, workers: int) -> DataLoader:
    sampler = EpochSampler(len(split), batch_size=batch_size, accum_steps=accum_steps, world=world, rank=rank,
                           seed=seed)
    if sampler.steps == 0:
        raise ValueError(f"{split.where}: {len(split)} images do not fill one optimiser step of "
                         f"{batch_size * accum_steps * world} images; lower --total-batch-size")
    # its own generator: creating an iterator must not draw from the global RNG (resume exactness)
    return DataLoader(Augmented(split, transform, seed), batch_size=batch_size, sampler=sampler,
                      num_workers=workers, drop_last=True, persistent_workers=workers > 0,
                      generator=torch.Generator().manual_seed(seed))


def eval_loader(split: Split, transform: Callable, *, batch_size: int, world: int, rank: int,
                workers: int) -> DataLoader:
    return DataLoader(Transformed(split, transform), batch_size=batch_size,
                      sampler=Shard(len(split), world=world, rank=rank), num_workers=workers,
                      generator=torch.Generator())


class _Readable(Dataset):
    def __init__(self, split: Split):
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[int, bool]:
        try:
            self.split.get(index)
        except BadImage:
            return index, False
        return index, True


def without_bad_images(split: Split, *, world: int, rank: int, workers: int,
                       all_sum: Callable[[torch.Tensor], torch.Tensor]) -> Split:
    """``split`` less the images that cannot be decoded (each decoded once, the work shared over
    processes and loader workers; ``all_sum`` sums a tensor over processes)."""
    bad = torch.zeros(len(split), dtype=torch.int64)
    loader = DataLoader(_Readable(split), batch_size=64, sampler=Shard(len(split), world=world, rank=rank),
                        num_workers=workers)
    for indices, ok in loader:
        bad[indices[~ok]] = 1
    bad = all_sum(bad)
    dropped = [i for i in range(len(split)) if bad[i]]
    if not dropped:
        return split
    if len(dropped) == len(split):
        raise ValueError(f"none of the {len(split)} images of {split.where} can be read")
    names = tuple(split.name(i) for i in dropped)
    kept = [i for i in range(len(split)) if not bad[i]]
    return split.select(kept, f"{split.where} (less {len(dropped)} unreadable)", names)


def describe_skipped(split: Split) -> str:
    shown = ", ".join(split.skipped[:LISTED_BAD_IMAGES])
    more = f" (+{len(split.skipped) - LISTED_BAD_IMAGES} more)" if len(split.skipped) > LISTED_BAD_IMAGES else ""
    return f"--skip-bad-images: left out {len(split.skipped)} unreadable image(s) of {split.where}: {shown}{more}"
