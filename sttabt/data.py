"""Images for measurements: a folder read with PIL through timm's eval transform, with labels.

Two layouts are understood:

* **ImageFolder**: one sub-folder per class (``DIR/<class>/<image>``); the label is the class's
  index among the sorted class names, sorted the way timm's ``ImageDataset`` (and so the training
  tool) sorts them (natural order: ``class2`` before ``class10``);
* **flat ImageNet**: every image directly in ``DIR``, named ``<wnid>_<anything>.<ext>``
  (``n01440764_tench.JPEG``); the label is the wnid's position in the sorted list of the 1,000
  ImageNet-1k wnids that timm ships (``timm.data.ImageNetInfo``), i.e. the usual class index.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
WNID = re.compile(r"^(n\d{8})(?=[_.])")  # ImageNet synset id at the start of a file name
LAYOUTS = ("imagefolder", "imagenet-flat")


@dataclass(frozen=True)
class LabelledImages:
    files: list[str]        # image paths, sorted
    labels: list[int]       # class index of each file
    classes: list[str]      # class names by index (sub-folder names, or the 1,000 ImageNet wnids)
    layout: str             # one of LAYOUTS


def list_images(folder: str | os.PathLike) -> list[str]:
    """Sorted paths of the images under ``folder`` (recursively); errors when there are none."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"data folder not found: {folder}")
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                   if name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return files


def imagenet_wnids() -> list[str]:
    """The 1,000 ImageNet-1k wnids in class-index order (sorted), from timm's bundled list."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo("imagenet-1k").label_names())


def imagenet_label(name: str, wnids: Sequence[str] | None = None) -> int:
    """Class index of an ImageNet file name ``<wnid>_<anything>.<ext>`` (e.g. ``n01440764_tench.JPEG`` -> 0)."""
    found = WNID.match(os.path.basename(name))
    wnids = imagenet_wnids() if wnids is None else wnids
    if found is None or found.group(1) not in wnids:
        raise ValueError(f"cannot read an ImageNet class from {os.path.basename(name)!r}: images directly "
                         "in the data folder must be named <wnid>_<name>.<ext> (e.g. n01440764_tench.JPEG); "
                         "otherwise put them in one sub-folder per class (ImageFolder layout)")
    return wnids.index(found.group(1))


def labelled_images(folder: str | os.PathLike, *, limit: int | None = None) -> LabelledImages:
    """The images under ``folder`` with their labels (see the module notes for the two layouts).

    ``limit``: keep ``limit`` images spread evenly over the sorted list (so that a folder sorted by
    class keeps a share of every class), not just the first ones.
    """
    from timm.data.readers.reader_image_folder import find_images_and_targets

    folder = os.fspath(folder)
    files = list_images(folder)
    top = [f for f in files if os.path.dirname(f) == folder.rstrip(os.sep)]
    if top and len(top) != len(files):
        raise ValueError(f"{folder} holds images both directly inside it ({len(top)}) and in sub-folders "
                         f"({len(files) - len(top)}): use one layout, flat ImageNet names or one sub-folder per class")
    if top:
        wnids = imagenet_wnids()
        labels = {f: imagenet_label(f, wnids) for f in files}
        classes, layout = wnids, "imagenet-flat"
    else:
        found, class_to_idx = find_images_and_targets(folder, types=IMAGE_SUFFIXES)
        labels = {os.path.normpath(f): target for f, target in found}
        labels = {f: labels[os.path.normpath(f)] for f in files}
        classes, layout = sorted(class_to_idx, key=class_to_idx.get), "imagefolder"
    files = spread(files, limit)
    return LabelledImages(files, [labels[f] for f in files], classes, layout)


def spread(items: Sequence, limit: int | None) -> list:
    """``limit`` items picked at even steps (all of them when ``limit`` is None or not smaller)."""
    check_count("limit", limit)
    if limit is None or limit >= len(items):
        return list(items)
    return [items[i * len(items) // limit] for i in range(limit)]


def eval_transform(model: nn.Module) -> Callable:
    """timm's eval transform for ``model`` (or an STTABT model's host) at its image size."""
    from timm.data import create_transform, resolve_data_config

    host = getattr(model, "host", model)
    config = resolve_data_config({"input_size": (3, *host.patch_embed.img_size)}, model=host)
    return create_transform(**config)


class BadImageError(ValueError):
    """A file among the images that PIL cannot read; ``path`` names it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: not a readable image ({reason}); remove or replace it")
        self.path = path


def read_image(path: str, transform: Callable) -> torch.Tensor:
    """One image file, converted to RGB and transformed; :class:`BadImageError` names an unreadable file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return transform(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # PIL's errors for bad files
        raise BadImageError(str(path), str(err) or type(err).__name__) from None


def load_images(paths: Sequence[str], transform: Callable) -> torch.Tensor:
    """(N, 3, H, W) batch of the images at ``paths``, converted to RGB and transformed; the first
    unreadable file raises :class:`BadImageError` naming it."""
    if not paths:
        raise ValueError("no image files to load")
    return torch.stack([read_image(path, transform) for path in paths])


def load_readable(paths: Sequence[str], transform: Callable) -> tuple[torch.Tensor | None, list[int], list[str]]:
    """Like :func:`load_images`, skipping unreadable files: the batch of the readable ones (None when
    there is none), their positions in ``paths``, and the unreadable paths."""
    images, kept, bad = [], [], []
    for i, path in enumerate(paths):
        try:
            images.append(read_image(path, transform))
            kept.append(i)
        except BadImageError:
            bad.append(str(path))
    return (torch.stack(images) if images else None), kept, bad


def check_count(name: str, value: int | None, *, minimum: int = 1) -> int | None:
    """``value`` when it is None or a whole number >= ``minimum``, else a ``ValueError`` naming ``name``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return value


def image_batches(folder: str | os.PathLike, model: nn.Module, *, batch_size: int = 32,
                  limit: int | None = None, skipped: list[str] | None = None) -> Iterator[torch.Tensor]:
    """Batches of images from ``folder`` (flat or one sub-folder per class), preprocessed the way
    ``model`` expects (timm's ``resolve_data_config`` + eval ``create_transform``); ``limit``: the
    first ``limit`` images of the sorted list. An unreadable file raises :class:`BadImageError`, or,
    when a ``skipped`` list is given, is appended to it and left out."""
    check_count("batch_size", batch_size)
    check_count("limit", limit)
    files = list_images(folder)
    transform = eval_transform(model)
    files = files[:limit] if limit else files
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        if skipped is None:
            yield load_images(chunk, transform)
            continue
        images, _, bad = load_readable(chunk, transform)
        skipped += bad
        if images is not None:
            yield images
