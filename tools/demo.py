#!/usr/bin/env python
"""``make demo``: the registered STTABT models, their FLOPs at three keep ratios, and measured
throughput against the dense timm model, on this machine, in under a minute.

Weights are random (nothing is downloaded), which changes neither FLOPs nor speed: the fixed-budget
top-k pruner keeps the same number of tokens per layer whatever the image.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import timm  # noqa: E402
import torch  # noqa: E402

import sttabt  # noqa: E402,F401
from benchmark import benchmark  # noqa: E402
from sttabt.timing import device_name  # noqa: E402
from sttabt.flops import sttabt_flops  # noqa: E402
from sttabt.registry import HOSTS  # noqa: E402

KEEPS = (0.7, 0.5, 0.3)
SPEED_MODELS = ("sttabt_deit_tiny", "sttabt_deit_small")
SPEED_BATCH = 16


def flops_table() -> None:
    print(f"GFLOPs per 224 px image (one multiply-add = one FLOP), ABT top-k, fixed budget, scout factor 4\n")
    header = f"{'model':22s} {'dense':>7s} {'scout':>7s}" + "".join(f" {'keep ' + str(k):>9s}" for k in KEEPS)
    print(header)
    print("-" * len(header))
    x = torch.randn(1, 3, 224, 224)
    for name in HOSTS:
        cells = []
        for keep in KEEPS:
            model = timm.create_model(name, pruner="abt", keep=keep, budget="fixed").eval()
            with torch.no_grad():
                report = sttabt_flops(model, model.plan(x)[0])
            cells.append(report.total / 1e9)
        print(f"{name:22s} {report.dense.gflops:7.2f} {report.scout.gflops:7.2f}" + "".join(f" {c:9.2f}" for c in cells))


def speed_table() -> None:
    print(f"\nThroughput, batch {SPEED_BATCH}, float32, {device_name(torch.device('cpu'))}, keep 0.5 "
          "(dense and pruned timed alternately, medians)\n")
    header = f"{'model':22s} {'dense img/s':>12s} {'pruned img/s':>13s} {'speedup':>8s} {'ideal':>6s} {'share':>6s}"
    print(header)
    print("-" * len(header))
    images = torch.randn(SPEED_BATCH, 3, 224, 224)
    for name in SPEED_MODELS:
        model = timm.create_model(name, pruner="abt", keep=0.5, budget="fixed").eval()
        r = benchmark(model, images, warmup=2, repeats=5)
        print(f"{name:22s} {r['dense_img_s']:12.1f} {r['pruned_img_s']:13.1f} {r['speedup']:7.2f}x "
              f"{r['ideal_speedup']:5.2f}x {r['share_of_ideal']:6.2f}")


def main() -> int:
    flops_table()
    speed_table()
    print("\nMore: python tools/flops.py --help, python tools/benchmark.py --help (README.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
