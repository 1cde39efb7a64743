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
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of images, got {limit}")
    if limit is None or limit >= len(items):
        return list(items)
    return [items[i * len(items) // limit] for i in range(limit)]


def eval_transform(model: nn.Module) -> Callable:
    """timm's eval transform for ``model`` (or an STTABT model's host) at its image size."""
    from timm.data import create_transform, resolve_data_config

    host = getattr(model, "host", model)
    config = resolve_data_config({"input_size": (3, *host.patch_embed.img_size)}, model=host)
    return create_transform(**config)


def load_images(paths: Sequence[str], transform: Callable) -> torch.Tensor:
    """(N, 3, H, W) batch of the images at ``paths``, converted to RGB and transformed."""
    from PIL import Image

    chunk = []
    for path in paths:
        with Image.open(path) as image:
            chunk.append(transform(image.convert("RGB")))
    return torch.stack(chunk)


def image_batches(folder: str | os.PathLike, model: nn.Module, *, batch_size: int = 32,
                  limit: int | None = None) -> Iterator[torch.Tensor]:
    """Batches of images from ``folder`` (flat or one sub-folder per class), preprocessed the way
    ``model`` expects (timm's ``resolve_data_config`` + eval ``create_transform``); ``limit``: the
    first ``limit`` images of the sorted list."""
    files = list_images(folder)
    transform = eval_transform(model)
    files = files[:limit] if limit else files
    for start in range(0, len(files), batch_size):
        yield load_images(files[start:start + batch_size], transform)
