"""``STTABT``: a host, its scout and a pruner, run masked (training) or pruned (inference)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from timm.models.vision_transformer import VisionTransformer

from .approx import DEFAULT_FACTOR, ApproxNet
from .executors import HostOutput, check_host, forward_masked, forward_pruned, has_token_head
from .inputs import check_depth, check_images, install_host_check
from .pruners import PlannedPruner, create_pruner
from .pruners.masks import check_budget

EXECUTORS = ("masked", "pruned")


@dataclass
class STTABTOutput:
    logits: torch.Tensor
    masks: torch.Tensor           # the plan, (L + 1, B, T)
    scout: HostOutput | None      # the scout's output (None for the oracle pruner)


class STTABT(nn.Module):
    """Token-pruned Vision Transformer.

    ``forward(images, hard=None, executor=None, budget=None)``:
    * ``hard``: hard 0/1 masks (default in eval mode) or soft concrete masks (default in train mode);
    * ``executor``: ``"pruned"`` removes tokens (default for hard masks), ``"masked"`` keeps dense
      shapes and multiplies by the masks (the only choice for soft masks);
    * ``budget``: ``"per_sample"`` or ``"fixed"`` (same token count for the whole batch); default: the
      model's ``budget`` or, when that is None, the pruner's default.
    """

    def __init__(self, host: VisionTransformer, scout: ApproxNet, pruner: PlannedPruner,
                 budget: str | None = None):
        super().__init__()
        check_host(host)
        install_host_check(host)  # host(x) refuses the inputs model(x) refuses
        self.host = host
        self.scout = scout
        self.pruner = pruner
        self.budget = None if budget is None else check_budget(budget)
        self.num_classes = host.num_classes
        self.pretrained_cfg = dict(getattr(host, "pretrained_cfg", {}) or {})
        self.default_cfg = self.pretrained_cfg

    @property
    def depth(self) -> int:
        return len(self.host.blocks)

    @property
    def num_tokens(self) -> int:
        return self.host.patch_embed.num_patches + 1

    def plan(self, images: torch.Tensor, *, hard: bool = True, budget: str | None = None
             ) -> tuple[torch.Tensor, HostOutput | None]:
        """The pruner's (L + 1, B, T) plan for ``images`` and the scout output it was made from."""
        check_images(images, self.host)  # every forward plans first: one check for all of them
        budget = check_budget(budget or self.budget or self.pruner.default_budget)
        kind = self.pruner.attention
        if self.pruner.source == "actual":
            with torch.no_grad():
                seen = forward_masked(self.host, images, attention=kind, scores_only=True)
            scout = None
        else:
            seen = scout = self.scout(images, attention=kind, scores_only=True)
        masks = self.pruner.plan(seen.attention, hard=hard, budget=budget)
        if has_token_head(self.host):  # the token head reads every token the last layer takes in
            masks = torch.cat((masks[:-1], masks[-2:-1]))
        return masks, scout

    def forward_detailed(self, images: torch.Tensor, *, hard: bool | None = None,
                         executor: str | None = None, budget: str | None = None) -> STTABTOutput:
        hard = (not self.training) if hard is None else hard
        executor = ("pruned" if hard else "masked") if executor is None else executor
        if executor not in EXECUTORS:
            raise ValueError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")
        if executor == "pruned" and not hard:
            raise ValueError("the pruned executor needs hard masks (soft masks keep every token partly)")
        masks, scout = self.plan(images, hard=hard, budget=budget)
        if executor == "pruned":
            logits = forward_pruned(self.host, images, masks)
        else:
            logits = forward_masked(self.host, images, masks).logits
        return STTABTOutput(logits, masks, scout)

    def forward(self, images: torch.Tensor, *, hard: bool | None = None, executor: str | None = None,
                budget: str | None = None) -> torch.Tensor:
        return self.forward_detailed(images, hard=hard, executor=executor, budget=budget).logits

    def get_classifier(self) -> nn.Module:
        return self.host.get_classifier()

    def no_weight_decay(self) -> set[str]:
        """Parameter names to keep out of weight decay (timm's optimiser factory reads this)."""
        names = {f"host.{n}" for n in self.host.no_weight_decay()}
        names |= {f"scout.net.{n}" for n in self.scout.net.no_weight_decay()}
        names |= {n for n, _ in self.named_parameters() if n.startswith("pruner.")}
        return names


def wrap(
    model: VisionTransformer,
    *,
    factor: int = DEFAULT_FACTOR,
    pruner: str | PlannedPruner = "concrete",
    p_logit: float = 0.0,
    keep: float | list[float] | None = None,
    budget: str | None = None,
    scout_init: str = "interpolate",
) -> STTABT:
    """Make any timm ``VisionTransformer`` with a class token an STTABT model.

    ``factor``: the scout is ``factor`` times thinner; ``pruner``: a name from
    ``sttabt.pruners.PRUNERS`` or a pruner module; ``p_logit``: initial and target per-layer logit
    of the concrete pruner (target keep ratio ``sigmoid(p_logit)``); ``keep``: keep ratio (or one per
    layer) of the top-k pruners; ``budget``: default batching mode (see :class:`STTABT`).
    """
    check_host(model)
    check_depth(len(model.blocks))
    if isinstance(pruner, str):
        pruner = create_pruner(pruner, len(model.blocks), p_logit=p_logit, keep=keep)
    scout = ApproxNet(model, factor, init=scout_init)
    return STTABT(model, scout, pruner, budget)
