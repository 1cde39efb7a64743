"""Online execution: a pruner decides after each layer's attention, from the host's own attention.

Layer ``l`` takes in the live tokens (its keys and values), computes attention for every live query,
hands the head-averaged probabilities to ``pruner.decide`` and computes the attention output and MLP
for the tokens it keeps only; a dropped token stops being a key from the next layer on.

* ``forward_online_masked``: dense shapes. Hard: a dropped token's residual stream passes through
  unchanged (the planned executors' semantics: the decisions form a nested plan); soft (LTP's
  training stage): the mask multiplies the layer's output and every token stays a key.
* ``forward_online_pruned``: tokens really removed, batched: after each layer the kept tokens are
  packed to the front (prefix tokens first, then in their order), every layer runs on the batch's
  largest count with a key padding mask when the counts differ.

Both return the logits and the (L + 1, B, T) masks the decisions made (``masks[l + 1]``: the output set
of layer ``l``), in the input's token order, so the FLOPs counter and the reports read them as plans.
"""
from __future__ import annotations

import torch
from torch import nn

from ..pruners.layout import TokenLayout
from .block import PROB_EPS, _merge, _mlp, _split_heads
from .host import embed, has_token_head, head


def _attend(block: nn.Module, x: torch.Tensor, keys: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``block`` on (B, n, D) tokens over the keys ``keys`` (B, n) (None: all):
    probabilities (B, H, n, n) and values (B, H, n, d)."""
    attn = block.attn
    q, k, v = _split_heads(attn.qkv(block.norm1(x)), 3, attn.num_heads)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if keys is not None:
        logits = logits.masked_fill(~keys[:, None, None, :], torch.finfo(logits.dtype).min)
    probs = logits.softmax(-1)
    if keys is not None:  # exact zeros on the masked keys (rows of no live key stay finite)
        probs = probs * keys[:, None, None, :]
        probs = probs / probs.sum(-1, keepdim=True).clamp_min(PROB_EPS)
    return probs, v


def _finish(block: nn.Module, x: torch.Tensor, probs: torch.Tensor, v: torch.Tensor,
            m_out: torch.Tensor | None) -> torch.Tensor:
    """The rest of the block: attention output, residuals and MLP, times ``m_out`` (B, n, 1) per token."""
    attn = block.attn
    out = attn.proj_drop(attn.proj(getattr(attn, "norm", nn.Identity())(_merge(attn.attn_drop(probs) @ v))))
    if m_out is not None:
        out = out * m_out
    x = x + block.drop_path1(block.ls1(out))
    return x + block.drop_path2(block.ls2(_mlp(block.mlp, block.norm2(x), m_out)))


def _decide(model: nn.Module, pruner: nn.Module, layer: int, probs: torch.Tensor, live: torch.Tensor,
            layout: TokenLayout, tokens: int, soft: bool) -> torch.Tensor:
    """The pruner's decision; the last layer of a host whose head reads every token (LV-ViT's token
    head) outputs every token it took in, as in the planned plans."""
    if layer == len(model.blocks) - 1 and has_token_head(model):
        return live.to(probs.dtype) if soft else live.clone()
    return pruner.decide(layer, probs.mean(1), live, layout=layout, soft=soft, tokens=tokens)


def forward_online_masked(model: nn.Module, images: torch.Tensor, pruner: nn.Module, layout: TokenLayout, *,
                          soft: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and (L + 1, B, T) masks of ``model`` under the online ``pruner``, dense shapes."""
    x = embed(model, images)
    batch, tokens, _ = x.shape
    live = torch.ones(batch, tokens, dtype=torch.bool, device=x.device)
    masks = [live.to(x.dtype)]
    for layer, block in enumerate(model.blocks):
        probs, v = _attend(block, x, None if soft else live)
        keep = _decide(model, pruner, layer, probs, live, layout, tokens, soft)
        if soft:
            x = _finish(block, x, probs, v, None) * keep.to(x.dtype).unsqueeze(-1)
            masks.append(keep.to(x.dtype))
        else:
            live = keep & live
            masks.append(live.to(x.dtype))
            x = _finish(block, x, probs, v, masks[-1].unsqueeze(-1))
    masks = torch.stack(masks)
    token_mask = masks[-1] if model.global_pool == "avg" else masks[-1] > 0.5
    return head(model, x, token_mask), masks


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@torch.no_grad()
def forward_online_pruned(model: nn.Module, images: torch.Tensor, pruner: nn.Module, layout: TokenLayout
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and (L + 1, B, T) hard masks of ``model`` under the online ``pruner``, tokens removed."""
    x = embed(model, images)
    batch, tokens, _ = x.shape
    where = torch.arange(tokens, device=x.device).expand(batch, -1)  # the input index of every row
    live = torch.ones(batch, tokens, dtype=torch.bool, device=x.device)
    ragged = False
    masks = [torch.ones(batch, tokens, dtype=x.dtype, device=x.device)]
    for layer, block in enumerate(model.blocks):
        probs, v = _attend(block, x, live if ragged else None)
        keep = _decide(model, pruner, layer, probs, live, layout, tokens, False) & live
        count = keep.sum(-1)
        order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)  # kept rows first, in order
        widest, narrowest = torch.stack((count.amax(), count.amin())).tolist()  # one host sync per layer
        index = order[:, :widest]
        rows = index[:, None, :, None].expand(-1, probs.shape[1], -1, probs.shape[-1])
        x = _finish(block, _take(x, index), probs.gather(2, rows), v, None)
        live, where = keep.gather(1, index), where.gather(1, index)
        ragged = widest != narrowest
        masks.append(torch.zeros_like(masks[0]).scatter_(1, where, live.to(x.dtype)))
    token_mask = live if ragged or model.global_pool == "avg" or has_token_head(model) else None
    return head(model, x, token_mask), torch.stack(masks)
