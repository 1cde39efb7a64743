#!/usr/bin/env python
"""FLOPs of an STTABT model: dense host, scout, pruned host, kept tokens per layer.

    python tools/flops.py --model sttabt_deit_small --keep 0.5
    python tools/flops.py --model sttabt_lvvit_small --p-logit -1.0 --data ../shared/data/imagenet-sample --json

One multiply-add = one FLOP (fvcore's and the papers' convention). The reported ``gflops`` is per
image and includes the scout. Token counts come from ``--data`` images, or from synthetic images
when no folder is given (exact for the fixed-budget top-k pruners, whose counts do not depend on
the image). ``--fvcore`` also counts the executed forward with fvcore as a cross-check.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import add_model_args, build_model  # noqa: E402
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
    parser.add_argument("--num-images", type=int, default=8, help="images to measure (default 8)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--fvcore", action="store_true", help="also count the executed forward with fvcore")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    model = build_model(args)
    if args.data:
        try:
            batches = list(image_batches(args.data, model, batch_size=args.batch_size, limit=args.num_images))
        except ValueError as err:
            raise SystemExit(f"error: {err}") from None
    else:
        g = torch.Generator().manual_seed(SYNTHETIC_SEED)
        size = (args.num_images, 3, *model.host.patch_embed.img_size)
        batches = list(torch.randn(size, generator=g).split(args.batch_size))
    report = {"model": args.model, "pruner": type(model.pruner).__name__, "factor": args.factor,
              "budget": model.budget or model.pruner.default_budget,
              "data": args.data or "synthetic", **measure(model, batches, use_fvcore=args.fvcore)}
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"{report['model']}  pruner={report['pruner']}  factor={args.factor}  images={report['images']} ({report['data']})")
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
