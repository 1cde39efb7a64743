"""Images for measurements: a folder read with PIL through timm's eval transform."""
from __future__ import annotations

import os
from typing import Iterator

import torch
from torch import nn

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_batches(folder: str | os.PathLike, model: nn.Module, *, batch_size: int = 32,
                  limit: int | None = None) -> Iterator[torch.Tensor]:
    """Batches of images from ``folder`` (flat or one sub-folder per class), preprocessed the way
    ``model`` expects (timm's ``resolve_data_config`` + eval ``create_transform``)."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise ValueError(f"data folder not found: {folder}")
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
                   if name.lower().endswith(IMAGE_SUFFIXES))
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    host = getattr(model, "host", model)
    config = resolve_data_config({"input_size": (3, *host.patch_embed.img_size)}, model=host)
    transform = create_transform(**config)
    files = files[:limit] if limit else files
    for start in range(0, len(files), batch_size):
        chunk = []
        for path in files[start:start + batch_size]:
            with Image.open(path) as image:
                chunk.append(transform(image.convert("RGB")))
        yield torch.stack(chunk)
