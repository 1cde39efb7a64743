#!/usr/bin/env python
"""Pictures of the patches each layer of an STTABT model takes in.

    python tools/visualize.py --model sttabt_deit_small --checkpoint model.pth photo.jpg photos/ --out pictures/
    python tools/visualize.py --model sttabt_deit_tiny --keep 0.5 --limit 4 --out /tmp/vis \
        ../shared/data/imagenet-sample --pruners abt manual      # --pruners takes every name after it

For every image (a file, or every image under a folder) it writes ``<stem>_layers.png``: the image as
the model sees it (timm's eval resize and centre crop, un-normalised), then one tile per layer with
the patches that layer does not take in dimmed and the share it keeps in the caption, under the
model's own pruner; and ``<stem>_pruners.png``: one such row per pruner of ``--pruners`` (default:
the model's own, then every other training-free pruner, at ``--keep`` or each pruner's default
keep ratio). Random weights work too (nothing is downloaded): the pictures then show what the
pruners make of an untrained scout's attention.

With ``--checkpoint`` the model's own pruner is the checkpoint's (trained p-logits, saved keep
ratios) unless ``--pruner``, ``--keep`` or ``--p-logit`` ask for another. An unreadable file among the
images stops the tool naming it, before any picture is written; ``--skip-bad-images`` leaves such
files out and counts them.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import add_model_args, build_model, check_counts, fail, pruner_kind  # noqa: E402
from sttabt.data import (IMAGE_SUFFIXES, BadImageError, eval_transform, list_images, load_images,  # noqa: E402
                         load_readable, spread)
from sttabt.pruners import PRUNERS, create_pruner  # noqa: E402
from sttabt.visualize import layer_row, model_keep_maps, normalisation, pruner_grid, to_display  # noqa: E402

BATCH_SIZE = 16  # images planned at once


def find_images(paths: list[str], limit: int | None = None) -> list[Path]:
    """Image files named directly or found under folders, in the order given (folders sorted);
    ``limit``: that many, spread evenly over the list (so a class-sorted folder shows every class)."""
    files: list[Path] = []
    for path in paths:
        if os.path.isdir(path):
            try:
                files += [Path(f) for f in list_images(path)]
            except ValueError as err:
                fail(str(err))
        elif os.path.isfile(path):
            files.append(Path(path))
        else:
            fail(f"no such image file or folder: {path}")
    if not files:
        fail(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(paths)}")
    return spread(files, limit)


def grid_pruners(args: argparse.Namespace, model) -> dict[str, object]:
    """Row label -> pruner (None: the model's own) for the comparison grid."""
    own, depth = pruner_kind(model.pruner), model.depth
    unknown = [n for n in args.pruners or [] if n not in PRUNERS]
    if unknown:
        fail(f"unknown pruner {', '.join(map(repr, unknown))}; choose from {', '.join(PRUNERS)}")
    names = args.pruners or [own] + [n for n in PRUNERS if n != own and not create_pruner(n, depth).trainable]
    rows = {}
    for name in dict.fromkeys(names):  # in order, once each
        if name == own:
            rows[f"{name} (model)"] = None
        elif create_pruner(name, depth).trainable:
            rows[name] = create_pruner(name, depth, p_logit=args.p_logit or 0.0)
        else:
            rows[name] = create_pruner(name, depth, keep=args.keep)
    return rows


def load(files: list[Path], transform, skipped: list[str] | None = None) -> tuple[torch.Tensor | None, list[int]]:
    """The batch of ``files`` and the positions it holds; an unreadable file fails naming it, or, with
    a ``skipped`` list, is appended to it and left out."""
    if skipped is None:
        try:
            return load_images([str(f) for f in files], transform), list(range(len(files)))
        except BadImageError as err:
            fail(f"{err}; or pass --skip-bad-images")
    images, kept, bad = load_readable([str(f) for f in files], transform)
    skipped += bad
    return images, kept


def output_names(files: list[Path]) -> list[str]:
    """Stems, made unique with ``_2``, ``_3``, ... where files in different folders share one."""
    seen: dict[str, int] = {}
    names = []
    for f in files:
        seen[f.stem] = seen.get(f.stem, 0) + 1
        names.append(f.stem if seen[f.stem] == 1 else f"{f.stem}_{seen[f.stem]}")
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("images", nargs="*", help="image files or folders of images")
    parser.add_argument("--out", required=True, help="folder for the pictures (created if missing)")
    parser.add_argument("--pruners", nargs="+", metavar="NAME",
                        help=f"pruners of the comparison grid, from {', '.join(PRUNERS)} "
                             "(default: the model's own and every training-free one)")
    parser.add_argument("--limit", type=int, help="at most this many images, spread evenly over those found")
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="leave unreadable files out (and count them) instead of stopping")
    args = parser.parse_args(argv)
    if not args.images:
        if any(os.path.exists(name) for name in args.pruners or []):
            fail("--pruners took the images too; put the images first, or end the list of pruners with --")
        fail("name at least one image file or folder")
    check_counts(args, {"limit": 1})
    files = find_images(args.images, args.limit)
    model = build_model(args)
    rows = grid_pruners(args, model)
    transform = eval_transform(model)
    mean, std = normalisation(transform)
    skipped = [] if args.skip_bad_images else None
    if skipped is None:  # every file is read before the out folder is made and the first picture written
        for start in range(0, len(files), BATCH_SIZE):
            load(files[start:start + BATCH_SIZE], transform)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = output_names(files)
    drawn = 0
    for start in range(0, len(files), BATCH_SIZE):
        images, kept = load(files[start:start + BATCH_SIZE], transform, skipped)
        if images is None:
            continue
        pictures = to_display(images, mean, std)
        own = model_keep_maps(model, images)
        maps = {label: own if pruner is None else model_keep_maps(model, images, pruner)
                for label, pruner in rows.items()}
        for i, (at, picture) in enumerate(zip(kept, pictures)):
            name, source = names[start + at], files[start + at]
            layers, grid = out / f"{name}_layers.png", out / f"{name}_pruners.png"
            layer_row(picture, own[i]).save(layers)
            pruner_grid(picture, {label: m[i] for label, m in maps.items()}).save(grid)
            print(f"{source}: {layers} {grid}")
            drawn += 1
    if skipped:
        print(f"skipped {len(skipped)} unreadable file(s): {', '.join(skipped)}")
    if not drawn:
        fail(f"none of the {len(files)} file(s) is a readable image")
    print(f"{drawn} image(s), pruners {', '.join(rows)}: pictures in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
