"""Pictures of token pruning: which patches each layer takes in.

A plan ``(L + 1, B, T)`` (see :mod:`sttabt.pruners.masks`) becomes per-layer *keep maps* of the
patch grid, ``(B, L, gh, gw)``: ``maps[b, l]`` holds the patches layer ``l`` takes in (its keys and
values, ``masks[l]``). A picture dims the patches a layer does not take in and leaves the others
byte-identical.

Images are shown as the model sees them: timm's eval transform (resize and centre crop to the
model's input size), then un-normalised by :func:`to_display`, so that patch ``(i, j)`` is the
``patch x patch`` square at row ``i``, column ``j`` of the picture. Captions number layers from 1
(``layer 1`` is the first block) and give the share of patches the layer takes in (the prefix
tokens, CLS, are always kept and not counted).

Everything here is a pure function of tensors, arrays and PIL images, except
:func:`model_keep_maps`, which runs a model's scout and pruner.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .pruners import PlannedPruner
from .wrap import STTABT

KEEP_THRESHOLD = 0.5       # a token is in a set when its mask is >= this (the hard mask of a soft plan)
DIM_FACTOR = 0.75          # dropped patches move this share of the way from their colour to DIM_COLOUR
DIM_COLOUR = (0, 0, 0)     # black
MIN_TILE = 128             # small inputs are scaled up, by a whole factor (nearest), to at least this size
FONT_SIZE = 13
CAPTION_HEIGHT = 20        # pixels under each tile for its caption
GAP = 4                    # pixels between tiles and between rows
LABEL_PADDING = 8          # pixels either side of a row label
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
INPUT_CAPTION = "input"

# --------------------------------------------------------------------------------------------------
# maths: plans to keep maps, dimming, un-normalising
# --------------------------------------------------------------------------------------------------
def patch_keep_maps(masks: torch.Tensor, grid: Sequence[int], prefix_tokens: int = 1) -> torch.Tensor:
    """(B, L, gh, gw) bool: the patches each layer takes in, from a (L + 1, B, T) plan whose tokens
    are ``prefix_tokens`` (CLS, ...) followed by the ``gh x gw`` patches in row-major order."""
    gh, gw = (int(g) for g in grid)
    if masks.dim() != 3:
        raise ValueError(f"a plan is (L + 1, B, T) masks, got shape {tuple(masks.shape)}")
    sets, batch, tokens = masks.shape
    if tokens != prefix_tokens + gh * gw:
        raise ValueError(f"the plan has {tokens} tokens per set, but {prefix_tokens} prefix token(s) and a "
                         f"{gh} x {gw} patch grid make {prefix_tokens + gh * gw}; pass the grid and prefix "
                         "count of the host that made the plan (see patch_layout)")
    layer_in = masks[:-1, :, prefix_tokens:] >= KEEP_THRESHOLD
    return layer_in.reshape(sets - 1, batch, gh, gw).transpose(0, 1).cpu()


def kept_share(keep_map) -> float:
    """Share (0..1) of the patches a keep map holds."""
    return float(np.asarray(_numpy(keep_map), dtype=bool).mean())


def dim_dropped(image, keep_map, *, factor: float = DIM_FACTOR,
                colour: Sequence[int] = DIM_COLOUR) -> np.ndarray:
    """``image`` (H x W x 3 uint8 array or PIL image) with the patches outside ``keep_map`` (gh, gw)
    blended ``factor`` of the way towards ``colour``; kept patches are returned unchanged."""
    pixels = _pixels(image)
    keep = np.asarray(_numpy(keep_map), dtype=bool)
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"the dimming factor must be in [0, 1], got {factor}")
    if keep.ndim != 2:
        raise ValueError(f"a keep map is (gh, gw), got shape {keep.shape}")
    (h, w), (gh, gw) = pixels.shape[:2], keep.shape
    if h % gh or w % gw:
        raise ValueError(f"a {h} x {w} image does not split into a {gh} x {gw} patch grid; bring it to the "
                         "model's input size first (sttabt.data.eval_transform, then to_display)")
    kept_pixels = keep.repeat(h // gh, axis=0).repeat(w // gw, axis=1)[..., None]
    dimmed = np.round(pixels * (1.0 - factor) + np.asarray(colour, dtype=np.float64) * factor)
    return np.where(kept_pixels, pixels, dimmed.astype(np.uint8))


def to_display(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(B, H, W, 3) uint8 pictures of normalised (B, 3, H, W) model inputs."""
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    pixels = (images * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).cpu().numpy()


def normalisation(transform: Callable) -> tuple[Sequence[float], Sequence[float]]:
    """``(mean, std)`` of the ``Normalize`` step of a (torchvision ``Compose``) transform."""
    for step in getattr(transform, "transforms", [transform]):
        if hasattr(step, "mean") and hasattr(step, "std"):
            return step.mean, step.std
    raise ValueError("the transform has no Normalize step; pass the mean and std to to_display yourself")


# --------------------------------------------------------------------------------------------------
# running a model
# --------------------------------------------------------------------------------------------------
def patch_layout(model: STTABT) -> tuple[tuple[int, int], int]:
    """``((gh, gw), prefix_tokens)`` of the model's host."""
    host = model.host
    return tuple(int(g) for g in host.patch_embed.grid_size), int(getattr(host, "num_prefix_tokens", 1))


@torch.no_grad()
def model_keep_maps(model: STTABT, images: torch.Tensor, pruner: PlannedPruner | None = None) -> torch.Tensor:
    """(B, L, gh, gw) keep maps of the hard plan ``model`` (or its host and scout under another
    ``pruner``) makes for ``images``. Runs in eval mode and puts every module's mode back after."""
    runner = model if pruner is None else STTABT(model.host, model.scout, pruner, model.budget)
    modes = {m: m.training for m in runner.modules()}
    runner.eval()
    try:
        masks, _ = runner.plan(images, hard=True)
    finally:
        for module, training in modes.items():
            module.training = training
    return patch_keep_maps(masks, *patch_layout(model))


# --------------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------------
def layer_captions(keep_maps) -> list[str]:
    """``"layer i · k %"`` for each (gh, gw) map of ``keep_maps`` (L, gh, gw), layers from 1."""
    return [f"layer {i + 1} · {100 * kept_share(m):.0f} %" for i, m in enumerate(keep_maps)]


def tile_scale(size: int, min_tile: int = MIN_TILE) -> int:
    """The whole factor that brings a ``size`` px tile to at least ``min_tile`` px."""
    return max(1, math.ceil(min_tile / size))


def layer_row(image, keep_maps, *, label: str | None = None, label_width: int | None = None,
              min_tile: int = MIN_TILE, factor: float = DIM_FACTOR) -> Image.Image:
    """One row: ``image``, then one tile per layer with the patches it drops dimmed, each captioned;
    ``label`` (if given) at the left, in a column ``label_width`` px wide (default: its own width)."""
    pixels = _pixels(image)
    tiles = [pixels] + [dim_dropped(pixels, m, factor=factor) for m in keep_maps]
    captions = [INPUT_CAPTION] + layer_captions(keep_maps)
    scale = tile_scale(max(pixels.shape[:2]), min_tile)
    font = _font()
    if label_width is None:
        label_width = _label_width([label], font) if label else 0
    th, tw = pixels.shape[0] * scale, pixels.shape[1] * scale
    row = Image.new("RGB", (label_width + len(tiles) * (tw + GAP) + GAP, GAP + th + CAPTION_HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(row)
    if label:
        draw.text((LABEL_PADDING, GAP + th // 2), label, fill=INK, font=font, anchor="lm")
    for i, (tile, caption) in enumerate(zip(tiles, captions)):
        x = label_width + GAP + i * (tw + GAP)
        picture = Image.fromarray(tile)
        row.paste(picture if scale == 1 else picture.resize((tw, th), Image.NEAREST), (x, GAP))
        draw.text((x + tw // 2, GAP + th + CAPTION_HEIGHT // 2), caption, fill=INK, font=font, anchor="mm")
    return row


def pruner_grid(image, rows: Mapping[str, object], *, min_tile: int = MIN_TILE,
                factor: float = DIM_FACTOR) -> Image.Image:
    """One :func:`layer_row` per pruner, labelled at the left: ``rows`` maps a label to the
    (L, gh, gw) keep maps of ``image`` under that pruner."""
    if not rows:
        raise ValueError("no pruners to compare: pass at least one row")
    width = _label_width(list(rows), _font())
    strips = [layer_row(image, maps, label=label, label_width=width, min_tile=min_tile, factor=factor)
              for label, maps in rows.items()]
    grid = Image.new("RGB", (max(s.width for s in strips), sum(s.height for s in strips) + GAP), BACKGROUND)
    y = 0
    for strip in strips:
        grid.paste(strip, (0, y))
        y += strip.height
    return grid


def _pixels(image) -> np.ndarray:
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 array or a PIL image, got {pixels.dtype} array of shape "
                         f"{pixels.shape} (model inputs become pictures through to_display)")
    return pixels


def _numpy(array):
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else array


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default(size=FONT_SIZE)


def _label_width(labels: list[str], font) -> int:
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    return math.ceil(max(draw.textlength(label, font=font) for label in labels)) + 2 * LABEL_PADDING
