"""TensorBoard pictures of the concrete stage: which patches each layer takes in, for a few fixed
validation images, at every evaluation (see :mod:`sttabt.visualize`)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..visualize import layer_row, model_keep_maps, normalisation, to_display
from ..wrap import STTABT
from .data import Split

PICTURED_IMAGES = 4        # validation images shown, spread evenly over the split
PICTURE_TAG = "tokens"     # TensorBoard tags: tokens/image_0, tokens/image_1, ...


def token_pictures(val: Split, transform: Callable, device: torch.device,
                   count: int = PICTURED_IMAGES) -> Callable[[STTABT], dict[str, np.ndarray]]:
    """``pictures(model) -> {tag: H x W x 3 uint8}``: one :func:`~sttabt.visualize.layer_row` per image
    of ``count`` fixed images of ``val`` (read once, here, through the eval ``transform``).

    The pictures use the hard plan in eval mode and no random numbers, so drawing them changes no
    training number (the loop also runs them under a forked RNG)."""
    chosen = val.subset(count)
    images = torch.stack([transform(chosen.get(i)[0]) for i in range(min(count, len(chosen)))])
    shown = to_display(images, *normalisation(transform))
    images = images.to(device)

    def pictures(model: STTABT) -> dict[str, np.ndarray]:
        maps = model_keep_maps(model, images)
        return {f"{PICTURE_TAG}/image_{i}": np.asarray(layer_row(picture, keep))
                for i, (picture, keep) in enumerate(zip(shown, maps))}

    return pictures
