#!/usr/bin/env python
"""Export a token-pruned model for deployment: its static-budget pruned pass as one graph.

    python tools/export.py --model sttabt_deit_small --keep 0.5 --format onnx --out deit_s_abt.onnx
    python tools/export.py --checkpoint concrete/p_logit_0/model.pth --format exported --out model.pt2

The model runs under ``budget="static"``: every sample keeps the same counts per layer
(``ceil(k_l * T)`` for the top-k pruners; for a concrete checkpoint the counts ``sttabt.calibrate``
stored in it), so its output does not depend on its batch. The batch size of the export is dynamic,
the image size static. ``onnx`` writes an ONNX file (input ``images``, output ``logits``; needs
``pip install 'sttabt[export]'``), ``exported`` a ``torch.export`` program (``torch.export.load``).
On the way out the file is loaded back and run on fresh images of another batch size against the
eager model: the largest absolute difference is printed, and the tool fails above ``--tolerance``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from _common import add_model_args, build_model, check_counts, fail  # noqa: E402
from sttabt.export import Deployable, export_onnx, export_program, onnx_session, run_onnx  # noqa: E402

FORMATS = ("onnx", "exported")
DEFAULT_TOLERANCE = 1e-4


def _check_batch(model, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(images)


def export(model, fmt: str, out: str, *, batch_size: int = 2, check_batch: int = 3, seed: int = 0) -> dict:
    """Write ``model`` (static budget) to ``out`` and compare the file's outputs with eager ones."""
    g = torch.Generator().manual_seed(seed)
    size = model.host.patch_embed.img_size
    example = torch.randn(batch_size, 3, *size, generator=g)
    fresh = torch.randn(check_batch, 3, *size, generator=g)
    deployable = Deployable(model).eval()
    if fmt == "onnx":
        export_onnx(deployable, example, out)
        got = run_onnx(onnx_session(out), fresh)
    else:
        torch.export.save(export_program(deployable, example), out)
        got = _check_batch(torch.export.load(out).module(), fresh)
    expected = _check_batch(deployable, fresh)
    return {"format": fmt, "out": out, "static_counts": list(model.static_counts()),
            "max_abs_diff": (got - expected).abs().max().item(), "check_batch": check_batch,
            "bytes": os.path.getsize(out)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(parser)
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--out", required=True, help="file to write (.onnx, or .pt2 for exported)")
    parser.add_argument("--batch-size", type=int, default=2, help="batch of the example input (the export "
                        "takes any batch size)")
    parser.add_argument("--check-batch", type=int, default=3, help="batch of the fresh images checked (default 3)")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"largest |exported - eager| accepted (default {DEFAULT_TOLERANCE})")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    check_counts(args, {"batch_size": 1, "check_batch": 1})
    if args.budget not in (None, "static"):
        fail(f"--budget {args.budget}: an exported model runs its static budget (counts fixed ahead); drop --budget")
    if args.format == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            fail("--format onnx needs onnx and onnxruntime: pip install 'sttabt[export]'")
    args.budget = "static"
    model = build_model(args)
    try:
        model.static_counts()
    except ValueError as err:
        fail(f"{err}; then save it with sttabt.save_checkpoint and pass that --checkpoint")
    result = {"model": args.model, **export(model, args.format, args.out, batch_size=args.batch_size,
                                           check_batch=args.check_batch)}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.model}: wrote {args.out} ({args.format}, {result['bytes']} bytes), static counts "
              f"{result['static_counts']}")
        print(f"  max |diff| against eager on {args.check_batch} fresh images: {result['max_abs_diff']:.3g}")
    if not result["max_abs_diff"] <= args.tolerance:
        fail(f"the exported model differs from eager by {result['max_abs_diff']:.3g} > --tolerance {args.tolerance}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
