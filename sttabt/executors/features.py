"""Every token's state under a plan, for ``forward_features`` / ``forward_intermediates``.

The masked semantics (DESIGN.md section 3.4): a token outside a layer's output set passes through
that layer unchanged, so a dropped token keeps the value it had when it was dropped. The pruned
executor computes only the kept rows; here the rows it does not compute keep their last value, and
the tokens are put back in their original order. With per-sample counts the padding rows (computed
for the batch maximum) are restored too, so each sample is what the masked executor gives it.
"""
from __future__ import annotations

import torch
from torch import nn

from .block import pruned_block
from .host import embed
from .pruned import survival_order


def pruned_tokens(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, *, record: bool = False
                  ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """All (B, T, D) tokens after the last block (before the final norm), original order, under a hard
    (L + 1, B, T) plan; with ``record`` also the embedding output and every block's output, likewise."""
    x = embed(model, images)
    order, counts = survival_order(masks)
    widest = counts.amax(-1).tolist()
    index = order[..., None].expand(-1, -1, x.shape[-1])
    state = x.gather(1, index)                      # sorted: CLS, then the longest survivors
    position = torch.arange(state.shape[1], device=x.device)
    states = [state] if record else []
    for layer, block in enumerate(model.blocks):
        n_in, n_out = widest[layer], widest[layer + 1]
        key_mask = (position[:n_in] < counts[layer, :, None])[:, None, None, :]
        out = pruned_block(block, state[:, :n_in], n_out, key_mask)
        kept = (position[:n_out] < counts[layer + 1, :, None])[..., None]
        state = torch.cat((torch.where(kept, out, state[:, :n_out]), state[:, n_out:]), 1)
        if record:
            states.append(state)
    def restore(t: torch.Tensor) -> torch.Tensor:  # sorted row j is token order[j]
        return torch.empty_like(t).scatter_(1, index, t)

    return restore(state), tuple(restore(s) for s in states)
