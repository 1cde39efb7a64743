"""Calibrating the static budget of a concrete pruner: per-layer token counts from data.

The concrete pruner's hard rule (``m_l >= 0.5``) keeps a different number of tokens in every image.
Deployment wants counts fixed ahead (static shapes, a prediction that does not depend on the rest of
its batch), so :func:`calibrate` runs the per-sample rule on a few batches of real images, averages
each set's count over all images, rounds it, and makes the counts nested (non-increasing, the last
layer CLS only). They are stored in the pruner's ``calibrated_counts`` buffer, so they travel with
its ``state_dict`` and with :func:`sttabt.save_checkpoint`.
"""
from __future__ import annotations

from typing import Iterable

import torch

from .pruners.layout import DEFAULT_LAYOUT, TokenLayout
from .pruners.masks import counts as plan_counts


def _batches(data) -> Iterable[torch.Tensor]:
    """Image tensors from a (B, C, H, W) tensor, a DataLoader or any iterable of batches (tensors, or
    ``(images, labels, ...)`` tuples / lists)."""
    if isinstance(data, torch.Tensor):
        yield data
        return
    for batch in data:
        images = batch[0] if isinstance(batch, (tuple, list)) else batch
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"calibrate needs batches of image tensors (or (images, labels) pairs), got "
                             f"{type(images).__name__}")
        yield images


def nested_counts(mean_counts: torch.Tensor, tokens: int, layout: TokenLayout = DEFAULT_LAYOUT) -> tuple[int, ...]:
    """Rounded mean counts (L + 1,) made a static plan's: at most ``tokens``, non-increasing, the last 1
    (``layout``: the prefix tokens, at least as many in every set; an ``avg`` head: the last two equal)."""
    counts = mean_counts.double().round().long().clamp(max(1, layout.prefix), tokens).tolist()
    counts[-1] = layout.prefix
    for layer in reversed(range(len(counts) - 1)):
        counts[layer] = max(counts[layer], counts[layer + 1])
    if layout.averaged:
        counts[-1] = counts[-2]
    return tuple(counts)


def calibrate(model, data, *, max_batches: int | None = None) -> tuple[int, ...]:
    """Set the static counts of ``model``'s concrete pruner from ``data`` and return them.

    ``data``: images (B, C, H, W), a DataLoader or an iterable of batches; ``max_batches``: use only
    the first ones. The scout runs in eval mode without gradients; the model's mode is restored.
    Deterministic: the same data gives the same counts.
    """
    pruner = model.pruner
    if not hasattr(pruner, "set_static_counts"):
        raise ValueError(f"{type(pruner).__name__} needs no calibration: its static counts come from its keep "
                         "ratios (ceil(k_l * T) per layer); calibrate concrete-pruner models")
    device = next(model.parameters()).device
    total, seen = None, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i, images in enumerate(_batches(data)):
                if max_batches is not None and i >= max_batches:
                    break
                masks, _ = model.plan(images.to(device), hard=True, budget="per_sample")
                per_set = plan_counts(masks[:-1]).sum(-1).double()  # the last set: CLS (see STTABT.plan)
                total = per_set if total is None else total + per_set
                seen += images.shape[0]
    finally:
        model.train(was_training)
    if not seen:
        raise ValueError("calibrate got no images: pass a tensor, a DataLoader or batches of images")
    mean = torch.cat((total.cpu() / seen, torch.ones(1, dtype=torch.float64)))
    layout = model.layout
    return pruner.set_static_counts(nested_counts(mean, model.num_tokens, layout), model.num_tokens, layout)
