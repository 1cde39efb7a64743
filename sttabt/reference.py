"""Published ImageNet-1k numbers (top-1 %, GFLOPs with the scout, kept %) drawn next to our sweeps.

Sources: the STTABT paper (ICLR 2023, factor 4) and the peers it compares with, as collected in
DESIGN.md section 5. ``kept`` is None where the paper gives only GFLOPs, ``gflops`` None where it
gives only the kept share (the training-free ABT and manual top-k rows).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Published:
    method: str
    top1: float
    gflops: float | None = None
    kept: float | None = None     # share of tokens kept, 0-1


DENSE = {"deit_small": Published("DeiT-S (dense)", 79.8, 4.6, 1.0),
         "lvvit_small": Published("LV-ViT-S (dense)", 83.3, 6.6, 1.0)}

PUBLISHED = {
    "deit_small": [
        Published("STTABT (paper)", 79.64, 3.68, 0.76),
        Published("STTABT (paper)", 79.43, 3.17),
        Published("STTABT (paper)", 78.96, 2.60, 0.54),
        Published("STTABT (paper)", 78.25, 2.03, 0.41),
        Published("STTABT (paper)", 76.67, 1.50, 0.28),
        Published("STTABT (paper)", 74.11, 1.13, 0.19),
        Published("ABT, approx. attention (paper)", 76.5, kept=0.474),
        Published("ABT, approx. attention (paper)", 78.4, kept=0.583),
        Published("manual top-k (paper)", 68.5, kept=0.477),
        Published("manual top-k (paper)", 75.8, kept=0.568),
        Published("DynamicViT", 79.3, 2.9),
        Published("EViT", 79.5, 3.0),
        Published("ToMe", 79.4, 2.7),
        Published("MCTF", 80.1, 2.6),
    ],
    "lvvit_small": [
        Published("STTABT (paper)", 83.10, 4.17),
        Published("STTABT (paper)", 82.54, 2.93),
        Published("STTABT (paper)", 82.16, 2.25),
        Published("STTABT (paper)", 80.90, 1.63),
    ],
}


def published(host: str | None) -> tuple[Published | None, list[Published]]:
    """(dense, others) for a reference host name ("deit_small", "lvvit_small"); (None, []) otherwise."""
    if host is None:
        return None, []
    return DENSE.get(host), list(PUBLISHED.get(host, []))
