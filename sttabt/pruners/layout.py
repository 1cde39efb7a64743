"""Where a host's tokens sit and what its head reads: the facts every pruner needs from a host.

A host's sequence is ``prefix`` leading tokens (class, distillation, register tokens, in timm's order)
followed by the patches. Prefix tokens are in every set of a plan (never dropped) and never counted
as patches: a keep ratio ``k`` keeps ``ceil(k * (N + 1)) - 1`` of the ``N`` patches, what a host with
one class token keeps (the paper's convention counts the class token in ``ceil(k * T)``), whatever the
number of prefix tokens.

``pool`` says what the head reads:

* ``"token"``: the prefix tokens (the class token; a distilled DeiT's two heads read the class and
  distillation tokens and average). The last layer outputs the prefix tokens only, and
  back-tracking starts from them with equal weights.
* ``"avg"``: the mean of the patch tokens kept at the end. The last layer outputs every token it
  takes in (``masks[L] == masks[L - 1]``); back-tracking scores that layer's keys from every query with
  equal weights, then goes on from the tokens it keeps, again with equal weights.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

POOLS = ("token", "avg")


@dataclass(frozen=True)
class TokenLayout:
    prefix: int = 1        # leading tokens always kept (class / distillation / register tokens)
    pool: str = "token"    # "token" or "avg" (see the module notes)

    def __post_init__(self):
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if int(self.prefix) != self.prefix or self.prefix < 0:
            raise ValueError(f"prefix must be a non-negative int, got {self.prefix!r}")
        if self.pool == "token" and self.prefix < 1:
            raise ValueError("a head that reads a token (global_pool='token') needs a class token")

    @property
    def averaged(self) -> bool:
        return self.pool == "avg"

    def always(self, batch: int, tokens: int, *, device=None, dtype=torch.bool) -> torch.Tensor:
        """(B, T) mask of the prefix tokens (the tokens every set holds)."""
        if tokens < self.prefix:
            raise ValueError(f"{tokens} tokens cannot hold {self.prefix} prefix tokens")
        mask = torch.zeros(batch, tokens, device=device, dtype=dtype)
        mask[:, : self.prefix] = 1
        return mask

    def count(self, ratio: float, tokens: int) -> int:
        """Tokens kept for keep ratio ``ratio`` of ``tokens`` (prefix included): the prefix plus
        ``ceil(ratio * (N + 1)) - 1`` of the ``N`` patches (at least one patch for an ``avg`` head)."""
        from .masks import keep_count

        patches = int(tokens) - self.prefix
        kept = keep_count(ratio, patches + 1) - 1
        return self.prefix + max(kept, 1 if self.averaged else 0)

    def topk_count(self, ratio: float, tokens: int) -> int:
        """How many tokens a top-k over :meth:`compete`'s scores picks: ``ceil(ratio * (N + 1))`` among
        the class token and the patches (with no class token, that minus one, at least one patch)."""
        from .masks import keep_count

        kept = keep_count(ratio, int(tokens) - self.prefix + 1)
        return kept if self.prefix else max(kept - 1, 1)

    def compete(self, score: torch.Tensor) -> torch.Tensor:
        """``score`` (B, T) with the prefix tokens after the class token (distillation, registers) out
        of a top-k (-inf): they are kept anyway and must not take a patch's place. With one class
        token this changes nothing, so such hosts keep exactly what they kept before."""
        if self.prefix <= 1:
            return score
        return torch.cat((score[:, :1], torch.full_like(score[:, 1: self.prefix], -math.inf),
                          score[:, self.prefix:]), 1)

    def ratio(self, count, tokens: int):
        """The keep ratio ``count`` kept tokens (prefix included) stand for, the inverse of :meth:`count`:
        ``(count - prefix + 1) / (N + 1)``, i.e. ``count / T`` with one class token."""
        return (count - self.prefix + 1) / (int(tokens) - self.prefix + 1)

    def last_count(self, counts_before: int) -> int:
        """Size of the last set of a plan, ``masks[L]``, given ``|masks[L - 1]|``."""
        return counts_before if self.averaged else self.prefix


def layout_of(host) -> TokenLayout:
    """The layout of a timm ``VisionTransformer`` (or anything with ``num_prefix_tokens`` and
    ``global_pool``)."""
    return TokenLayout(int(getattr(host, "num_prefix_tokens", 1)), getattr(host, "global_pool", "token") or "token")


DEFAULT_LAYOUT = TokenLayout()
