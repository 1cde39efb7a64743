"""The real rows of a batch padded to its widest sample, for the per-token work of a pruned layer.

Under per-sample counts (a planned pruner's per-sample budget, an online pruner's thresholds, text
padding) a pruned layer runs on the batch's widest output set; the rows past a sample's own count are
padding. Attention needs the padded (B, n, D) layout, but everything else a
layer does to its outputs (the query projection, the attention output, the feed-forward: most of its
FLOPs) is per token, so it runs on the real rows only, flattened to (R, D), and the results go back in
place. Padding rows keep their input values (finite: they are masked keys of the next layer).
"""
from __future__ import annotations

import torch

PACK_BELOW = 0.9  # pack when the real rows are fewer than this share of the padded ones


class RealRows:
    """``rows``: (B, n) bool, the real rows of a padded (B, n, ...) batch; ``count``: how many there
    are, when the caller knows it: on an accelerator the rows are then found without a host sync."""

    def __init__(self, rows: torch.Tensor, count: int | None = None):
        self.shape = tuple(rows.shape)
        flat = rows.reshape(-1)
        if count is None or flat.device.type == "cpu":
            self.index = flat.nonzero().squeeze(1)
        else:  # the real rows first, in order (a stable sort), then the first ``count``
            self.index = torch.argsort((~flat).to(torch.int8), stable=True)[:count]

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """(B, n, D) -> (R, D): the real rows, in order."""
        return t.reshape(-1, t.shape[-1]).index_select(0, self.index)

    def put(self, base: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """A copy of ``base`` (B, n, D') with its real rows replaced by ``t`` (R, D')."""
        return base.reshape(-1, base.shape[-1]).index_copy(0, self.index, t).view(*self.shape, -1)

    def scatter(self, t: torch.Tensor) -> torch.Tensor:
        """(R, D') -> (B, n, D'), zeros in the padding rows."""
        return self.put(t.new_zeros(*self.shape, t.shape[-1]), t)


def worth_packing(real: int, batch: int, widest: int) -> bool:
    """Whether ``real`` real rows of ``batch`` samples padded to ``widest`` leave enough padding out."""
    return real < PACK_BELOW * batch * widest
