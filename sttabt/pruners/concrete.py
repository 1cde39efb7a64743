"""Concrete masking (STTABT section 3.3): back-tracked scores turned into learnable keep masks.

Walking the layers backwards from CLS, the scout's pre-softmax attention logits give every key a
score ``s`` in [0.01, 1] (how much the tokens the next layer needs attend to it). One learnable logit
per layer, ``p_logit_l``, shifts the decision: the relaxed mask is the Concrete (Gumbel-sigmoid)
formula with the deterministic score in place of noise,
``m~ = sigmoid((logit(sigmoid(p_logit_l)) + logit(s)) / tau)``, and ``logit(sigmoid(x)) = x``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .layout import DEFAULT_LAYOUT, TokenLayout
from .masks import check_budget, fill_to_count, keep_ratio_per_layer
from .qk import QKAttention, attention_shape

TEMPERATURE = 0.1      # tau of the Concrete relaxation
IMPACT_MIX = 0.1       # p: weight of a query's own score in its attention row
SCORE_FLOOR = 0.01     # s = 0.01 + 0.99 * s: no valid token scores exactly zero
STD_EPS = 1e-7         # in the per-row standardisation of attention logits
LOGIT_EPS = 1e-6       # clamp of s before logit(s), keeps gradients finite at s = 1
HARD_THRESHOLD = 0.5   # hard mask: m >= 0.5
P_LOGIT_DECAY = 1e-3   # weight of sum_l (p_logit_l - v)^2
KEEP_LAMBDA_VISION = 100.0  # lambda of (sigmoid(v) - mean soft mask)^2 for images (1e-3 for text)


def _standard_normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def key_scores(logits: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Steps 1-2: standardise each attention row over the valid keys (population std: divide by the
    number of valid keys), Phi, average heads. (B, T, T).

    Padding keys take no part in the mean or the std and score exactly 0, what the reference's
    -10000 key bias before the standardisation gives; what the logits hold there does not matter.
    Without padding the masking steps are left out (multiplying by ones changes no value), and
    without autograd the elementwise steps run in place: the same values, fewer passes over the
    (B, H, T, T) logits.
    """
    if valid is None:
        return _unpadded_key_scores(logits)
    keys = valid.bool()[:, None, None, :]
    logits = logits.masked_fill(~keys, 0.0)
    weight = keys.to(logits.dtype)
    n = weight.sum(-1, keepdim=True).clamp_min(1)
    mean = logits.sum(-1, keepdim=True) / n
    variance = (((logits - mean) * weight) ** 2).sum(-1, keepdim=True) / n
    std = variance.clamp_min(torch.finfo(logits.dtype).tiny).sqrt()  # finite gradient on constant rows
    return (_standard_normal_cdf((logits - mean) / (std + STD_EPS)) * weight).mean(1)


def _unpadded_key_scores(logits: torch.Tensor) -> torch.Tensor:
    """:func:`key_scores` when every key is valid, operation for operation."""
    n = logits.shape[-1]
    mean = logits.sum(-1, keepdim=True) / n
    centred = logits - mean
    variance = (centred ** 2).sum(-1, keepdim=True) / n
    std = variance.clamp_min(torch.finfo(logits.dtype).tiny).sqrt()
    if torch.is_grad_enabled() and logits.requires_grad:
        return _standard_normal_cdf(centred / (std + STD_EPS)).mean(1)
    phi = centred.div_(std + STD_EPS).div_(math.sqrt(2)).erf_().add_(1).mul_(0.5)  # Phi(z), in place
    return phi.mean(1)


def layer_key_scores(logits: Sequence[torch.Tensor], layer: int, valid: torch.Tensor | None,
                     dtype: torch.dtype) -> torch.Tensor:
    """:func:`key_scores` of ``logits[layer]`` in ``dtype``, or the scores a scout already made there
    (a :class:`~sttabt.pruners.qk.QKAttention` with ``scores``, made from the same logits and mask)."""
    made = getattr(logits, "scores", None)
    made = None if made is None else made[layer]
    if made is not None and made.dtype == dtype:
        return made
    return key_scores(logits[layer].to(dtype), valid)


def concrete_masks(
    logits: Sequence[torch.Tensor],
    p_logits: torch.Tensor,
    *,
    hard: bool,
    budget: str = "per_sample",
    valid: torch.Tensor | None = None,
    tau: float = TEMPERATURE,
    p: float = IMPACT_MIX,
    counts: Sequence[int] | None = None,
    layout: TokenLayout = DEFAULT_LAYOUT,
) -> torch.Tensor:
    """Plan (L + 1, B, T) of soft (``hard=False``) or 0/1 masks, nested, CLS always kept.

    ``logits[l]``: (B, H, T, T) pre-softmax attention logits of the scout at layer ``l`` (a
    :class:`~sttabt.pruners.qk.QKAttention` may carry their key scores already: :func:`layer_key_scores`);
    ``p_logits``: (L,); ``valid``: optional (B, T) bool of real (non-padding) tokens; padding takes
    no part in any statistic and is never kept, so a sample's plan does not depend on its padding.
    The recursion always runs on the soft masks; hard mode thresholds each layer's soft mask
    (``m_l >= 0.5``), as the reference does. Soft masks are nested, so the hard ones are too.
    ``budget="fixed"`` (hard only) keeps, per layer, the batch-mean count of the per-sample rule
    (rounded, at least the next layer's count) for every sample, chosen by the relaxed mask value:
    batch-dependent (one sample changes what the others keep), for training and research.
    ``budget="static"`` (hard only) keeps ``counts[l]`` tokens in ``masks[l]`` for every sample, chosen
    by the relaxed mask value (ties: lower index), the next layer's set always included: batch-invariant.
    ``counts``: ``L + 1`` non-increasing ints (``counts[L]`` is 1, CLS), e.g. from :func:`sttabt.calibrate`.
    ``layout``: the host's prefix tokens (``m_L = c`` = one on each, always kept) and pooling; with an
    ``"avg"`` head the last layer's keys are scored from every (valid) query with equal weights
    (``m_{L} = c = 1``), its mask is nested over the prefix only, and ``m_L = m_{L-1}`` (the head
    averages what the last layer keeps).
    """
    check_budget(budget)
    if budget != "per_sample" and not hard:
        raise ValueError(f"budget={budget!r} needs hard masks; soft masks keep every token partly")
    if budget != "per_sample" and valid is not None:
        raise ValueError("inputs with padding (valid=...) need budget='per_sample'")
    if (budget == "static") != (counts is not None):
        raise ValueError("budget='static' needs counts (one per set of the plan), and only it takes them")
    depth = len(logits)
    if p_logits.shape != (depth,):
        raise ValueError(f"need one p_logit per layer ({depth}), got shape {tuple(p_logits.shape)}")
    batch, tokens = attention_shape(logits)
    device = logits.device if isinstance(logits, QKAttention) else logits[0].device  # without making a map
    dtype = p_logits.dtype if p_logits.is_floating_point() else torch.float32
    validf = torch.ones(batch, tokens, device=device, dtype=dtype) if valid is None else valid.to(dtype)
    cls = layout.always(batch, tokens, device=device, dtype=dtype)
    averaged = layout.averaged
    score = torch.maximum(validf, cls) if averaged else cls  # c: the previous layer's scores
    out = score  # soft m_{l+1} (for an avg head's first step: every query, equal weights)
    kept = cls.bool()  # hard m_{l+1}
    soft_masks, hard_masks = [out], [kept]
    for layer in reversed(range(depth)):
        u = layer_key_scores(logits, layer, valid, dtype)
        rows = out * (p * score + 1 - p)
        s = torch.einsum("bq,bqk->bk", rows, u) / out.sum(-1, keepdim=True)
        s = s / s.amax(-1, keepdim=True)
        s = (SCORE_FLOOR + (1 - SCORE_FLOOR) * s) * validf
        score = s
        relaxed = torch.sigmoid((p_logits[layer] + torch.logit(s, eps=LOGIT_EPS)) / tau) * validf
        first_averaged = averaged and layer == depth - 1
        out = torch.maximum(relaxed, cls if first_averaged else out)
        soft_masks.append(out)
        if hard:
            keep = out >= HARD_THRESHOLD
            if budget == "fixed":
                count = keep.sum(-1).float().mean().round().long().clamp(min=kept.sum(-1).max())
                keep = fill_to_count(relaxed.masked_fill(validf == 0, -1.0), kept, count.expand(batch))
            elif budget == "static":
                count = torch.full((batch,), int(counts[layer]), dtype=torch.long, device=kept.device)
                keep = fill_to_count(relaxed, kept, count)
            kept = keep
            hard_masks.append(kept)
        if first_averaged:  # m_L = m_{L-1}
            soft_masks[0] = out
            if hard:
                hard_masks[0] = kept
    if hard:
        return torch.stack(hard_masks[::-1]).to(dtype)
    return torch.stack(soft_masks[::-1])


def concrete_regulariser(
    p_logits: torch.Tensor,
    soft_masks: torch.Tensor,
    target_p_logit: float,
    *,
    keep_lambda: float = KEEP_LAMBDA_VISION,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``1e-3 * sum_l (p_logit_l - v)^2 + lambda * (sigmoid(v) - mean soft mask)^2``.

    The mean soft mask is the share of (valid) tokens the layers take in, averaged over layers
    ``0..L-1`` and the batch; ``sigmoid(v)`` is therefore the target keep ratio.
    """
    target = torch.sigmoid(torch.tensor(float(target_p_logit), dtype=p_logits.dtype, device=p_logits.device))
    mean_keep = keep_ratio_per_layer(soft_masks, valid).mean()
    return P_LOGIT_DECAY * ((p_logits - target_p_logit) ** 2).sum() + keep_lambda * (target - mean_keep) ** 2
