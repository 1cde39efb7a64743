"""A scout's attention kept as its queries and keys: the maps are made only where a planner reads them.

A scout that runs fused attention (``scaled_dot_product_attention``) never holds a (B, H, T, T)
matrix. What back-tracking needs from layer ``l`` is the attention rows of the queries the next layer
keeps, ``O_{l+1}``: :meth:`QKAttention.rows` computes exactly those rows from the layer's q and k
(``(q * scale) @ k^T``, then softmax and the mean over heads for ``"probs"``), the same operations
the dense scout ran on every row. Indexing (``attention[l]``) still gives the full map of layer
``l``, made on demand, so planners that read every row (soft concrete masks, the forward top-k)
work unchanged, one layer at a time.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

KINDS = ("logits", "probs")


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, H, T, d) queries -> (B, H, n, d), rows ``index`` (B, n) of every head."""
    b, h, _, d = x.shape
    if b == 1:  # batch 1: one index_select, no expanded index
        return x.index_select(2, index[0])
    return x.gather(2, index[:, None, :, None].expand(b, h, index.shape[1], d))


class QKAttention(Sequence):
    """Per-layer scout attention as (B, H, T, d) queries and keys.

    ``kind``: ``"logits"`` (pre-softmax, (B, H, T, T) maps) or ``"probs"`` (softmax over keys, mean
    over heads, (B, T, T) maps); ``scale``: the attention scale applied to the queries;
    ``valid``: optional (B, T) bool of real keys (text): padding keys get the most negative logit
    before the softmax (``"probs"`` only; logits are returned raw, as recorded scouts return them).
    """

    def __init__(self, queries: Sequence[torch.Tensor], keys: Sequence[torch.Tensor], scale: float,
                 kind: str, valid: torch.Tensor | None = None):
        if kind not in KINDS:
            raise ValueError(f"attention kind must be one of {KINDS}, got {kind!r}")
        if len(queries) != len(keys) or not queries:
            raise ValueError("need one query and one key tensor per layer")
        self.queries, self.keys = tuple(queries), tuple(keys)
        self.scale, self.kind, self.valid = scale, kind, valid

    @property
    def batch(self) -> int:
        return self.queries[0].shape[0]

    @property
    def tokens(self) -> int:
        return self.keys[0].shape[2]

    @property
    def device(self) -> torch.device:
        return self.queries[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.queries[0].dtype

    def __len__(self) -> int:
        return len(self.queries)

    def __getitem__(self, layer):
        if isinstance(layer, slice):
            return [self[i] for i in range(*layer.indices(len(self)))]
        return self._maps(self.queries[layer], layer)

    def rows(self, layer: int, index: torch.Tensor) -> torch.Tensor:
        """The rows of queries ``index`` (B, n) of layer ``layer``'s map: (B, H, n, T) logits or
        (B, n, T) probabilities."""
        return self._maps(gather_rows(self.queries[layer], index), layer)

    def _maps(self, q: torch.Tensor, layer: int) -> torch.Tensor:
        logits = (q * self.scale) @ self.keys[layer].transpose(-2, -1)
        if self.kind == "logits":
            return logits
        if self.valid is not None:
            bias = (~self.valid.bool()).to(logits.dtype)[:, None, None, :] * torch.finfo(logits.dtype).min
            logits = logits + bias
        return logits.softmax(-1).mean(1)


def attention_shape(attn: Sequence[torch.Tensor]) -> tuple[int, int]:
    """(batch, tokens) of per-layer attention maps or of a :class:`QKAttention` (which it does not
    materialise)."""
    if isinstance(attn, QKAttention):
        return attn.batch, attn.tokens
    return attn[0].shape[0], attn[0].shape[-1]


def kept_index(keep: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n) indices of the tokens of the (B, T) bool mask ``keep``, padded with other tokens up to
    ``n`` (at least the largest row count): their rows are then weighted zero by the caller."""
    if n >= keep.shape[-1]:
        return torch.arange(keep.shape[-1], device=keep.device).expand(keep.shape[0], -1)
    return keep.to(torch.int8).topk(n, dim=-1, sorted=False).indices


def plan_inputs(attn: Sequence[torch.Tensor], keep: Sequence[float], budget: str, valid) -> tuple[int, int]:
    """:func:`sttabt.pruners.masks.check_plan_inputs` for maps or a :class:`QKAttention` (checked on
    shape-only stand-ins, so no map is made)."""
    from .masks import check_plan_inputs

    if isinstance(attn, QKAttention):
        stand_in = torch.empty(attn.batch, attn.tokens, attn.tokens, device="meta")
        attn = [stand_in] * len(attn)
    return check_plan_inputs(attn, keep, budget, valid)
