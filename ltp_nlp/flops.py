"""FLOPs of a pruned encoder in LTP's reference convention (multiply-adds, per example).

Per layer: attention ``2 d n_att^2 + 4 d^2 n_att`` MACs (Q, K, V and output projections and the two
attention products on the ``n_att`` tokens entering the layer) and feed-forward ``8 d^2 n_ffn`` MACs
(``n_ffn``: tokens kept after it; ``8 d^2`` is ``2 d d_ff`` for ``d_ff = 4 d``, general ``2 d d_ff``). The
baseline is the same count at the unpadded input length. FLOPs = 2 x MACs (the reference's
convention for GLUE; the vision side counts one multiply-add as one FLOP, as fvcore does).
STTABT modes add their planning pass at the full length (it always runs on every token): the scout's
(or, for the oracle, the host's own) layers in full except the last, of which only the Q and K
projections and the attention scores run (:func:`planning_macs`, what ``ltp_nlp.approx.planning_attention``
computes).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FLOPS_PER_MAC = 2


def layer_macs(hidden: int, intermediate: int, n_att: torch.Tensor, n_ffn: torch.Tensor) -> torch.Tensor:
    """MACs of one post-norm layer, elementwise over token counts."""
    n_att, n_ffn = n_att.double(), n_ffn.double()
    return 2 * hidden * n_att ** 2 + 4 * hidden ** 2 * n_att + 2 * hidden * intermediate * n_ffn


def encoder_macs(hidden: int, intermediate: int, counts: torch.Tensor) -> torch.Tensor:
    """(B,) MACs of the whole encoder from ``counts`` (L + 1, B): tokens entering each layer, then
    tokens kept after the last (what every executor returns)."""
    return layer_macs(hidden, intermediate, counts[:-1], counts[1:]).sum(0)


def dense_macs(hidden: int, intermediate: int, depth: int, lengths: torch.Tensor) -> torch.Tensor:
    """(B,) MACs of the unpruned encoder at the real lengths."""
    return depth * layer_macs(hidden, intermediate, lengths, lengths)


def planning_macs(hidden: int, intermediate: int, depth: int, lengths: torch.Tensor) -> torch.Tensor:
    """(B,) MACs of a planning pass: ``depth - 1`` whole layers, then the last layer's Q and K
    projections (``2 d^2 n``) and scores (``d n^2``); no values, attention output, feed-forward or head."""
    n = lengths.double()
    return (depth - 1) * layer_macs(hidden, intermediate, n, n) + 2 * hidden ** 2 * n + hidden * n ** 2


@dataclass
class FlopsMeter:
    """Accumulates per-example MACs over an evaluation; ``summary()`` gives the reported numbers."""

    hidden: int
    intermediate: int
    depth: int
    scout_hidden: int = 0          # 0: no scout
    scout_intermediate: int = 0

    def __post_init__(self):
        self.macs, self.baseline, self.examples = 0.0, 0.0, 0
        self.kept = torch.zeros(self.depth, dtype=torch.float64)   # sum over examples of n_att / length
        self.scout_macs = 0.0

    def update(self, counts: torch.Tensor, lengths: torch.Tensor) -> None:
        counts, lengths = counts.detach().double().cpu(), lengths.detach().double().cpu()
        self.macs += float(encoder_macs(self.hidden, self.intermediate, counts).sum())
        self.baseline += float(dense_macs(self.hidden, self.intermediate, self.depth, lengths).sum())
        if self.scout_hidden:
            self.scout_macs += float(planning_macs(self.scout_hidden, self.scout_intermediate, self.depth,
                                                   lengths).sum())
        self.kept += (counts[:-1] / lengths).sum(-1)
        self.examples += int(lengths.numel())

    def summary(self) -> dict:
        n = max(self.examples, 1)
        total = self.macs + self.scout_macs
        return {
            "baseline_gflops": FLOPS_PER_MAC * self.baseline / n / 1e9,
            "gflops": FLOPS_PER_MAC * total / n / 1e9,
            "relative_flops": total / self.baseline if self.baseline else float("nan"),
            "scout_gflops": FLOPS_PER_MAC * self.scout_macs / n / 1e9,
            "kept_per_layer": (self.kept / n).tolist(),
            "kept_mean": float((self.kept / n).mean()),
        }
