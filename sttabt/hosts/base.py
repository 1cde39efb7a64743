"""The host adapter interface (see :mod:`sttabt.hosts`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

if TYPE_CHECKING:
    from ..executors.rows import RealRows


class HostAdapter:
    """Per-layer maths of one host; the executors in :mod:`sttabt.executors.core` run the loops."""

    prefix: int = 1  # leading tokens every set keeps (class / distillation / register tokens)

    @property
    def layers(self) -> Sequence[nn.Module]:
        raise NotImplementedError

    def attention(self, layer: nn.Module, x: torch.Tensor, keys: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities (B, H, n, n) of every query over the ``keys`` (B, n) bool (None: all), and the
        values (B, H, n, d)."""
        raise NotImplementedError

    def finish(self, layer: nn.Module, x: torch.Tensor, probs: torch.Tensor, values: torch.Tensor,
               m_out: torch.Tensor | None, rows: RealRows | None = None) -> torch.Tensor:
        """The layer's output for the rows of ``probs`` (``x``: those rows' inputs); ``m_out`` (B, n, 1):
        0/1 (or soft) output mask, a token at 0 passing through unchanged; ``rows``, with no ``m_out``:
        the real rows (:class:`~sttabt.executors.rows.RealRows`), the only ones whose per-token work
        runs (the others keep their inputs)."""
        raise NotImplementedError

    def recorded_layer(self, layer: nn.Module, x: torch.Tensor, m_in: torch.Tensor | None,
                       m_out: torch.Tensor | None, keys: torch.Tensor | None, *, record: str | None = None,
                       workspace: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The layer under a plan's input and output masks ``m_in``, ``m_out`` (B, n), dense shapes, soft or
        0/1 (None: keep all; DESIGN.md section 3.4), and the layer's attention as ``record`` says: ``"logits"``, pre-softmax (B, H, T, T), or ``"probs"``, the probabilities it used averaged
        over heads (B, T, T); None without ``record``. ``workspace``: see :meth:`workspace`."""
        raise NotImplementedError

    def scores(self, layer: nn.Module, x: torch.Tensor, record: str, keys: torch.Tensor | None = None,
               workspace: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's attention on ``x`` in ``record``'s form, computing no more than needed for it."""
        raise NotImplementedError

    def workspace(self, x: torch.Tensor) -> torch.Tensor | None:
        """A (B, H, T, T) buffer that ``recorded_layer`` and ``scores`` may reuse for the attention matrix
        of every layer, without autograd only; None: the adapter allocates per layer."""
        return None

    def dense_layer(self, layer: nn.Module, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        """The host's own layer, fused attention (with its attention dropout when training);
        ``key_mask``: (B, 1, 1, n) bool, False for padding keys."""
        raise NotImplementedError

    def pruned_layer(self, layer: nn.Module, x: torch.Tensor, n_out: int, key_mask: torch.Tensor | None,
                     rows: RealRows | None = None) -> torch.Tensor:
        """The layer on (B, n_in, D) sorted tokens, fused attention, the first ``n_out`` tokens' outputs;
        ``key_mask``: (B, 1, 1, n_in) bool, False for padding keys; ``rows``: optional, the real output
        rows (:class:`~sttabt.executors.rows.RealRows`): the per-token work runs on those only, the other
        rows keep their inputs."""
        raise NotImplementedError

    def layer_cost(self, layer: nn.Module, *, mlp: bool = True, scores_only: bool = False):
        """The layer's :class:`sttabt.flops.costs.LayerCost` (fvcore's conventions) as the executors run
        it: ``mlp=False`` leaves out the feed-forward; ``scores_only``: only what the attention scores
        need (a planning pass's last layer)."""
        raise NotImplementedError
