"""Checks of what a model is given: the images at ``model(x)`` and the arguments that build it.

:func:`check_images` runs at the start of every STTABT forward (and, through a forward pre-hook, of
the dense host it wraps), so that a batch the model cannot run fails with an error that names what
was expected instead of a shape error deep inside a layer, or, worse, a silently wrong answer: with
a ``fixed`` budget one NaN image would change the token choice, and so the logits, of every other
image of its batch. It costs one reduction over the input; it is skipped while ``torch.compile``,
``torch.export``, TorchScript or ``torch.fx`` trace the model, so that it never breaks a graph.
"""
from __future__ import annotations

import torch
from torch import nn

from .capture import capturing

__all__ = ["check_images", "check_factor", "check_depth", "install_host_check"]


def _in_chans(host: nn.Module) -> int:
    first = next((m for m in host.patch_embed.modules() if isinstance(m, nn.Conv2d)), None)
    return first.in_channels if first is not None else 3


def check_images(images, host: nn.Module) -> None:
    """Raise ``TypeError`` / ``ValueError`` unless ``images`` is a (B >= 1, C, H, W) floating-point
    tensor of finite values with the channels and image size of the timm ``host``."""
    if capturing():
        return
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"the model takes a (B, C, H, W) tensor of images, got {type(images).__name__}; "
                        "stack the images with torch.stack (sttabt.data.load_images does it for files)")
    if not images.is_floating_point():
        raise TypeError(f"the images must be a floating-point tensor, got {images.dtype}; convert them with "
                        ".float() and normalise them the way timm's eval transform does "
                        "(sttabt.data.eval_transform)")
    height, width = host.patch_embed.img_size
    channels = _in_chans(host)
    if images.ndim != 4:
        hint = "; add the batch dimension with images.unsqueeze(0)" if images.ndim == 3 else ""
        raise ValueError(f"the model takes a 4-D batch (B, {channels}, {height}, {width}), got a {images.ndim}-D "
                         f"tensor of shape {tuple(images.shape)}{hint}")
    batch, got_channels, got_h, got_w = images.shape
    if batch == 0:
        raise ValueError(f"got a batch of zero images (shape {tuple(images.shape)}); pass at least one image")
    if got_channels != channels:
        raise ValueError(f"the model takes {channels}-channel images (B, {channels}, {height}, {width}), got "
                         f"{got_channels} channels (shape {tuple(images.shape)}); convert the images to RGB "
                         f"(PIL: image.convert('RGB')) or build the model with in_chans={got_channels}")
    if (got_h, got_w) != (height, width):
        size = got_h if got_h == got_w else (got_h, got_w)
        raise ValueError(f"the model takes {height} x {width} images, got {got_h} x {got_w} (shape "
                         f"{tuple(images.shape)}); resize them (sttabt.data.eval_transform does it for files) or "
                         f"build a model for this size: timm.create_model(name, img_size={size})")
    finite = torch.isfinite(images).flatten(1).all(1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten().tolist()
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        raise ValueError(f"{len(bad)} of {batch} images hold NaN or infinite values (batch index {shown}); "
                         "they would change the token choice of the other images of a fixed-budget batch: "
                         "fix or drop those images")


def _host_pre_hook(host: nn.Module, args: tuple) -> None:
    if args:
        check_images(args[0], host)


def install_host_check(host: nn.Module) -> None:
    """Make ``host(x)`` (the dense model an STTABT model wraps) run :func:`check_images` first; once."""
    if not any(hook is _host_pre_hook for hook in host._forward_pre_hooks.values()):
        host.register_forward_pre_hook(_host_pre_hook)


def check_factor(factor) -> int:
    """The scout's thinning factor: a whole number >= 1."""
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ValueError(f"factor must be a whole number >= 1 (the scout is factor times thinner than the host; "
                         f"4 and 8 are the paper's), got {factor!r}")
    return factor


def check_depth(depth) -> int:
    """A host's number of blocks: a whole number >= 1."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be a whole number of blocks >= 1, got {depth!r}")
    return depth
