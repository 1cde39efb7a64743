"""EViT-style pruning (Liang et al., ICLR 2022): keep the tokens the CLS token attends to most.

EViT decides inside each layer, after its attention: the CLS row of that attention, averaged over
heads, ranks the tokens, and only the best go on to the MLP and the next layers. Here the same rule
is *planned*: it reads the CLS rows of the scout's attention (or, as an oracle, of the host's own
dense pass), so the host keeps fused attention. EViT's fusion of the dropped tokens into one extra
token is left out: dropped tokens are simply dropped, like every other pruner of this package.

Rule, in the plan's convention (``masks[l]``: tokens layer ``l`` takes in, ``masks[l + 1]``: tokens it
outputs), going forwards:

* ``masks[0]``: every token (no attention has been seen yet, so ``keep[0]`` is not used);
* for ``l = 1 .. L - 1``: ``masks[l]`` = CLS plus the tokens of ``masks[l - 1]`` with the largest
  CLS attention at layer ``l - 1``, ``ceil(keep[l] * T)`` tokens in all (never more than
  ``masks[l - 1]`` holds, so the sets stay nested). Layer ``l - 1`` computes the attention, then its
  MLP only for the tokens kept: EViT's placement.
* ``masks[L]``: CLS only (the last layer's output feeds the classifier), as in the other pruners.

The planning pass runs dense, so the CLS row spreads over every token, dropped ones included; the
ranking among the tokens still alive is what counts (EViT, running online, would renormalise over
them first, which for head-averaged probabilities can swap near ties).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .layout import DEFAULT_LAYOUT, TokenLayout
from .masks import CLS_INDEX, fill_to_count, forward_counts, keep_counts
from .pruners import PlannedPruner, keep_schedule
from .qk import QKAttention, plan_inputs


def _cls_rows(attn: Sequence[torch.Tensor], layer: int) -> torch.Tensor:
    """(B, T) CLS row of layer ``layer``'s map; from queries and keys, only that row is computed."""
    if isinstance(attn, QKAttention):
        index = torch.full((attn.batch, 1), CLS_INDEX, dtype=torch.long, device=attn.device)
        return attn.rows(layer, index)[:, 0]
    return attn[layer][:, CLS_INDEX, :]


def cls_topk(
    attn: Sequence[torch.Tensor],
    keep: Sequence[float],
    *,
    budget: str = "fixed",
    valid: torch.Tensor | None = None,
    layout: TokenLayout = DEFAULT_LAYOUT,
) -> torch.Tensor:
    """Hard plan (L + 1, B, T) from head-averaged attention probabilities (see the module notes).

    ``attn[l]``: (B, T, T) attention of layer ``l`` averaged over heads (rows: queries, columns:
    keys); only row 0 (CLS) is read. ``keep[l]``: keep ratio k_l of layer ``l``'s input set.
    Without ``valid`` every sample keeps the same counts, so both budgets give the same plan.
    ``valid``: optional (B, T) bool of real tokens (text with padding): padding is never kept and
    ``T`` becomes each sample's real length; needs ``budget="per_sample"``.
    ``layout``: the host's prefix tokens (always kept, not counted) and pooling (an ``"avg"`` head:
    the last layer outputs every token it takes in); the class token must be token 0.
    """
    if layout.prefix < 1:
        raise ValueError("EViT ranks tokens by the class token's attention: the host needs a class token")
    batch, tokens = plan_inputs(attn, keep, budget, valid)
    depth = len(attn)
    device, dtype = (attn.device, attn.dtype) if isinstance(attn, QKAttention) else (attn[0].device, attn[0].dtype)
    cls = layout.always(batch, tokens, device=device)
    alive = torch.ones(batch, tokens, dtype=torch.bool, device=device) if valid is None else valid | cls
    masks = [alive]
    for layer in range(1, depth):
        score = _cls_rows(attn, layer - 1).masked_fill(~alive, -math.inf)
        if valid is None:
            wanted = torch.full((batch,), layout.count(keep[layer], tokens), dtype=torch.long, device=device)
        else:
            wanted = keep_counts(keep[layer], valid)
        alive = fill_to_count(score, cls, torch.minimum(alive.sum(-1), wanted))
        masks.append(alive)
    masks.append(alive if layout.averaged else cls)
    return torch.stack(masks).to(dtype)


class EViTPruner(PlannedPruner):
    """Training-free EViT-style top-k on the CLS attention of the scout (or of the host, ``"actual"``).

    ``keep``: a float uses the same hand-set schedule as ``ManualTopKPruner`` (every token for the
    first layers, then linearly down to ``keep``); a list gives one ratio per layer.
    """

    def __init__(self, depth: int, keep: float | Sequence[float] = 0.5, source: str = "approx"):
        super().__init__()
        if source not in ("approx", "actual"):
            raise ValueError(f"source must be 'approx' or 'actual', got {source!r}")
        self.source = source
        self.keep = keep_schedule(keep, depth)

    def plan(self, attention, *, hard=True, budget=None, valid=None, layout=None):
        self._hard_only(hard)
        return cls_topk(attention, self.keep, budget=budget or self.default_budget, valid=valid,
                        layout=layout or DEFAULT_LAYOUT)

    def static_counts(self, tokens: int, layout=None) -> tuple[int, ...]:
        return forward_counts(self.keep, tokens, layout)  # every budget keeps these counts (without padding)

    def extra_repr(self) -> str:
        return f"source={self.source}, keep={[round(k, 3) for k in self.keep]}"
