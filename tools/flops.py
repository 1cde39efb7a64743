#!/usr/bin/env python
"""FLOPs of an STTABT model: dense host, scout, pruned host, kept tokens per layer.

    python tools/flops.py --model sttabt_deit_small --keep 0.5
    python tools/flops.py --model deit_small_patch16_224 --keep 0.5      # a dense timm name, wrapped
    python tools/flops.py --model sttabt_lvvit_small --p-logit -1.0 --data ../shared/data/imagenet-sample --json

One multiply-add = one FLOP (fvcore's and the papers' convention). The reported ``gflops`` is per
image and includes the scout. Token counts come from ``--data`` images, or from synthetic images
when no folder is given (exact for the fixed-budget top-k pruners, whose counts do not depend on
the image). ``--fvcore`` also counts the executed forward with fvcore as a cross-check.

``--model`` also takes a dense timm name (``deit_small_patch16_224``, ``lvvit_small``): the dense model
is wrapped with ``sttabt.wrap`` and the pruner the flags ask for (by default the concrete pruner at
p-logit 0, as for the ``sttabt_`` names), and the report gives its own dense FLOPs (``dense_gflops``)
beside the pruned ones. ``--checkpoint`` runs the checkpoint's own pruner (trained p-logits, saved
keep ratios) unless ``--pruner``, ``--keep`` or ``--p-logit`` ask for another. An unreadable image
under ``--data`` stops the tool naming the file; ``--skip-bad-images`` leaves such files out and
counts them (``skipped_images``).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import add_model_args, build_model, check_counts, fail, pruner_report  # noqa: E402
from sttabt.data import image_batches  # noqa: E402
from sttabt.flops import fvcore_flops, sttabt_flops  # noqa: E402

SYNTHETIC_SEED = 0


def measure(model, batches, *, use_fvcore: bool = False) -> dict:
    """FLOPs report averaged over all images of ``batches``."""
    reports, sizes, fv = [], [], 0.0
    with torch.no_grad():
        for x in batches:
            masks, _ = model.plan(x)
            reports.append(sttabt_flops(model, masks).to_dict())
            sizes.append(x.shape[0])
            if use_fvcore:
                fv += fvcore_flops(model, (x,))
    images = sum(sizes)
    weights = torch.tensor(sizes, dtype=torch.float64) / images
    out = {key: (weights @ torch.tensor([r[key] for r in reports], dtype=torch.float64)).tolist()
           for key in reports[0]}
    out["images"] = images
    if use_fvcore:
        out["fvcore_executed_gflops"] = fv / images / 1e9
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--data", help="folder of images (flat or ImageFolder); default: synthetic images")
    parser.add_argument("--num-images", type=int, default=8, help="images to measure (default 8; with --data: "
                        "the first N of the sorted list, at most all of them)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-bad-images", action="store_true",
                        help="leave unreadable files under --data out (and count them) instead of stopping")
    parser.add_argument("--fvcore", action="store_true", help="also count the executed forward with fvcore")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    check_counts(args, {"num_images": 1, "batch_size": 1})
    if args.data and not os.path.isdir(args.data):
        fail(f"--data {args.data}: folder not found")
    model = build_model(args)
    skipped = [] if args.skip_bad_images else None
    if args.data:
        try:
            batches = list(image_batches(args.data, model, batch_size=args.batch_size, limit=args.num_images,
                                         skipped=skipped))
        except ValueError as err:
            hint = "; or pass --skip-bad-images" if "not a readable image" in str(err) else ""
            fail(f"--data: {err}{hint}")
        if not batches:
            fail(f"--data {args.data}: none of the images could be read ({len(skipped)} skipped)")
    else:
        g = torch.Generator().manual_seed(SYNTHETIC_SEED)
        size = (args.num_images, 3, *model.host.patch_embed.img_size)
        batches = list(torch.randn(size, generator=g).split(args.batch_size))
    report = {"model": args.model, **pruner_report(model.pruner), "factor": args.factor,
              "budget": model.budget or model.pruner.default_budget,
              "data": args.data or "synthetic", **measure(model, batches, use_fvcore=args.fvcore)}
    if skipped is not None:
        report["skipped_images"] = skipped
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['model']}  pruner={report['pruner']}  factor={args.factor}  images={report['images']} ({report['data']})")
    if skipped:
        print(f"  skipped {len(skipped)} unreadable file(s): {', '.join(skipped)}")
    print(f"  dense host      {report['dense_gflops']:8.3f} GFLOPs")
    print(f"  scout           {report['scout_gflops']:8.3f} GFLOPs")
    print(f"  pruned host     {report['host_gflops']:8.3f} GFLOPs")
    print(f"  total (pruned)  {report['gflops']:8.3f} GFLOPs  ({report['gflops'] / report['dense_gflops']:.1%} of dense)")
    if "fvcore_executed_gflops" in report:
        print(f"  fvcore, executed {report['fvcore_executed_gflops']:7.3f} GFLOPs")
    print("  kept tokens per layer: " + " ".join(f"{k:.2f}" for k in report["keep_per_layer"])
          + f"  (mean {report['keep_mean']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
