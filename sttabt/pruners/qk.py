"""A scout's attention kept as its queries and keys: the maps are made only where a planner reads them.

A scout that runs fused attention (``scaled_dot_product_attention``) never holds a (B, H, T, T)
matrix. What back-tracking needs from layer ``l`` is the attention rows of the queries the next layer
keeps, ``O_{l+1}``: :meth:`QKAttention.rows` computes exactly those rows from the layer's q and k
(``(q * scale) @ k^T``, then softmax and the mean over heads for ``"probs"``), the same operations
the dense scout ran on every row. Indexing (``attention[l]``) still gives the full map of layer
``l``, made on demand, so planners that read every row (soft concrete masks, the forward top-k)
work unchanged, one layer at a time.

On a CPU in eager inference the scout instead runs each layer's attention a few samples at a time
with :func:`attention_with_maps`, which keeps that layer's head-averaged probabilities, (B, T, T), as
a by-product: those samples' (H, T, T) maps stay in cache, and planning then gathers rows instead of
recomputing them (measured in docs/BENCHMARKS.md).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from ..capture import capturing

KINDS = ("logits", "probs")


def gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows ``index`` (B, n) of every sample of ``x``: (B, T, ...) -> (B, n, ...); a 4-d ``x`` is
    (B, H, T, d) queries, whose rows are taken in every head: (B, H, n, d). One ``index_select`` on the flattened rows: a copy of whole
    rows, where ``gather`` with an expanded index reads an index per element (several times slower
    on a CPU)."""
    batch, n = index.shape
    if batch == 1:
        return x.index_select(x.ndim - 2 if x.ndim == 4 else 1, index[0])
    if x.ndim == 4:  # (B, H, T, d): rows of every head
        b, h, t, d = x.shape
        start = torch.arange(b * h, device=x.device).view(b, h, 1) * t
        flat = (index[:, None, :] + start).reshape(-1)
        return x.reshape(b * h * t, d).index_select(0, flat).view(b, h, n, d)
    t = x.shape[1]
    flat = (index + torch.arange(batch, device=x.device)[:, None] * t).reshape(-1)
    return x.reshape(batch * t, *x.shape[2:]).index_select(0, flat).view(batch, n, *x.shape[2:])


class QKAttention(Sequence):
    """Per-layer scout attention as (B, H, T, d) queries and keys.

    ``kind``: ``"logits"`` (pre-softmax, (B, H, T, T) maps) or ``"probs"`` (softmax over keys, mean
    over heads, (B, T, T) maps); ``scale``: the attention scale applied to the queries;
    ``valid``: optional (B, T) bool of real keys (text): padding keys get the most negative logit
    before the softmax (``"probs"`` only; logits are returned raw, as recorded scouts return them).
    ``maps``: optional, per layer, the (B, T, T) ``"probs"`` map already made (by
    :func:`attention_with_maps`) or ``None``; rows are then read from it instead of recomputed.
    ``scores``: optional, per layer, the (B, T, T) concrete key scores of the ``"logits"`` already
    made (by :func:`attention_with_maps`, kind ``"logits"``) or ``None``: the concrete recursion reads
    them (:func:`sttabt.pruners.concrete.layer_key_scores`) instead of standardising the logits.
    """

    def __init__(self, queries: Sequence[torch.Tensor], keys: Sequence[torch.Tensor], scale: float,
                 kind: str, valid: torch.Tensor | None = None, maps: Sequence[torch.Tensor | None] | None = None,
                 scores: Sequence[torch.Tensor | None] | None = None):
        if kind not in KINDS:
            raise ValueError(f"attention kind must be one of {KINDS}, got {kind!r}")
        if len(queries) != len(keys) or not queries:
            raise ValueError("need one query and one key tensor per layer")
        maps = (None,) * len(queries) if maps is None else tuple(maps)
        if len(maps) != len(queries) or (kind != "probs" and any(m is not None for m in maps)):
            raise ValueError("maps: one entry per layer (a map or None), for the 'probs' kind only")
        scores = (None,) * len(queries) if scores is None else tuple(scores)
        if len(scores) != len(queries) or (kind != "logits" and any(m is not None for m in scores)):
            raise ValueError("scores: one entry per layer (key scores or None), for the 'logits' kind only")
        self.queries, self.keys, self.maps, self.scores = tuple(queries), tuple(keys), maps, scores
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
        made = self.maps[layer]
        return self._maps(self.queries[layer], layer) if made is None else made

    def rows(self, layer: int, index: torch.Tensor) -> torch.Tensor:
        """The rows of queries ``index`` (B, n) of layer ``layer``'s map: (B, H, n, T) logits or
        (B, n, T) probabilities."""
        made = self.maps[layer]
        if made is not None:
            return gather_rows(made, index)
        return self._maps(gather_rows(self.queries[layer], index), layer)

    def _maps(self, q: torch.Tensor, layer: int) -> torch.Tensor:
        logits = (q * self.scale) @ self.keys[layer].transpose(-2, -1)
        if self.kind == "logits":
            return logits
        if self.valid is not None:
            logits = logits + key_bias(self.valid, logits.dtype)
        return logits.softmax(-1).mean(1)


def key_bias(keys: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, n) key mask (bool or 0/1) -> (B, 1, 1, n) additive bias: 0 for keys, the dtype's min otherwise."""
    return ((keys <= 0.5) if keys.dtype != torch.bool else ~keys).to(dtype)[:, None, None, :] * torch.finfo(dtype).min


def keeps_maps(x: torch.Tensor) -> bool:
    """Whether a scout on ``x`` runs :func:`attention_with_maps`: eager CPU inference only. On
    accelerators the per-sample loop would cost a kernel launch per sample; graph captures (compile,
    export) keep whole-batch operations; autograd would need the softmax out of place."""
    return x.device.type == "cpu" and not torch.is_grad_enabled() and not capturing()


MAPS_CHUNK_BYTES = 2 << 20  # logits of the samples attended together: a few MiB stay in a core's cache


def attention_with_maps(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                        valid: torch.Tensor | None = None, kind: str = "probs") -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of (B, H, T, d) ``q``, ``k``, ``v``: the output (B, H, T, d) and one (B, T, T)
    map per sample, a few samples at a time (their (H, T, T) logits, :data:`MAPS_CHUNK_BYTES` at most
    unless one sample is larger, stay in cache, and no (B, H, T, T) tensor is made). ``kind``:
    ``"probs"``, the head-averaged probabilities, the maps :meth:`QKAttention.rows` would compute from
    ``q`` and ``k``; ``"logits"``, the concrete key scores of the logits
    (:func:`sttabt.pruners.concrete.key_scores`, what the concrete recursion reads). ``valid``: (B, T)
    bool of real keys. Inference only: the softmax runs in place."""
    from .concrete import key_scores

    if kind not in KINDS:
        raise ValueError(f"attention kind must be one of {KINDS}, got {kind!r}")
    batch, heads, tokens, _ = q.shape
    out = q.new_empty(batch, heads, tokens, v.shape[-1])
    maps = q.new_empty(batch, tokens, tokens, dtype=q.dtype if kind == "probs" else torch.float32)
    chunk = max(1, MAPS_CHUNK_BYTES // (heads * tokens * tokens * q.element_size()))
    logits = q.new_empty(min(chunk, batch) * heads, tokens, tokens)
    q = q * scale
    bias = None if valid is None else key_bias(valid, q.dtype)
    for start in range(0, batch, chunk):
        end = min(start + chunk, batch)
        part = logits[: (end - start) * heads]
        per_sample = part.view(end - start, heads, tokens, tokens)
        torch.matmul(q[start:end].flatten(0, 1), k[start:end].flatten(0, 1).transpose(-2, -1), out=part)
        if kind == "logits":
            maps[start:end] = key_scores(per_sample.float(), None if valid is None else valid[start:end])
        if bias is not None:
            per_sample.add_(bias[start:end])
        torch.softmax(part, -1, out=part)
        torch.matmul(part, v[start:end].flatten(0, 1), out=out[start:end].flatten(0, 1))
        if kind == "probs":
            torch.sum(per_sample, 1, out=maps[start:end])
    if kind == "probs":
        maps /= heads  # the mean over heads, as a sum then one division
    return out, maps


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
