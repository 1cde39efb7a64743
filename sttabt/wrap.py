"""``STTABT``: a host, its scout and a pruner, run masked (training) or pruned (inference)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import VisionTransformer

from .approx import DEFAULT_FACTOR, ApproxNet
from .executors.host import forward_head as host_forward_head
from .executors.online import forward_online_masked, forward_online_pruned
from .executors import HostOutput, check_host, forward_masked, forward_pruned, has_token_head, pruned_tokens
from .inputs import check_depth, check_images, install_host_check
from .pruners import PlannedPruner, create_pruner
from .pruners.layout import TokenLayout, layout_of
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
    * ``budget``: ``"static"`` (deployment: counts fixed ahead, ``ceil(k_l * T)`` per layer or, for the
      concrete pruner, calibrated by :func:`sttabt.calibrate`; a sample's output does not depend on its
      batch; compiles and exports), ``"fixed"`` (same count for the whole batch; for the concrete pruner
      the batch mean, so batch-dependent) or ``"per_sample"`` (counts differ across the batch); default:
      the model's ``budget`` or, when that is None, the pruner's default.
    """

    def __init__(self, host: VisionTransformer, scout: ApproxNet | None, pruner: nn.Module,
                 budget: str | None = None):
        super().__init__()
        check_host(host)
        install_host_check(host)  # host(x) refuses the inputs model(x) refuses
        self.host = host
        self.scout = scout
        self.pruner = pruner
        self.budget = None if budget is None else check_budget(budget)
        if scout is None and not self.online and pruner.source == "approx":
            raise ValueError(f"{type(pruner).__name__} plans from a scout: pass an ApproxNet (sttabt.wrap builds one)")
        self.num_classes = host.num_classes
        self.pretrained_cfg = dict(getattr(host, "pretrained_cfg", {}) or {})
        self.default_cfg = self.pretrained_cfg
        self.num_features = host.num_features
        self.head_hidden_size = host.head_hidden_size
        self.feature_info = [dict(info, module=f"host.{info['module']}") for info in host.feature_info]

    @property
    def depth(self) -> int:
        return len(self.host.blocks)

    @property
    def num_tokens(self) -> int:
        """Tokens of the host's sequence: its prefix tokens (class, distillation, registers), then the patches."""
        return self.host.patch_embed.num_patches + self.host.num_prefix_tokens

    @property
    def online(self) -> bool:
        """True for a pruner that decides during the host's pass (``'ltp'``, ``'evit'``): no scout."""
        return bool(getattr(self.pruner, "online", False))

    @property
    def layout(self) -> TokenLayout:
        """The host's prefix tokens (always kept) and pooling, which every pruner's plan follows."""
        return layout_of(self.host)

    def _resolve(self, hard: bool | None, executor: str | None) -> tuple[bool, str]:
        hard = (not self.training) if hard is None else hard
        executor = ("pruned" if hard else "masked") if executor is None else executor
        if executor not in EXECUTORS:
            raise ValueError(f"unknown executor {executor!r}: use one of {', '.join(EXECUTORS)}")
        if executor == "pruned" and not hard:
            raise ValueError("the pruned executor needs hard masks (soft masks keep every token partly)")
        return hard, executor

    def _budget(self, budget: str | None) -> str:
        return check_budget(budget or self.budget or self.pruner.default_budget)

    def static_counts(self) -> tuple[int, ...]:
        """The ``L + 1`` token counts of every sample's plan under ``budget="static"``, as ints."""
        counts = tuple(self.pruner.static_counts(self.num_tokens, self.layout))
        if has_token_head(self.host):  # the last layer's input set feeds the token head (see ``plan``)
            counts = counts[:-1] + counts[-2:-1]
        return counts

    def plan(self, images: torch.Tensor, *, hard: bool = True, budget: str | None = None
             ) -> tuple[torch.Tensor, HostOutput | None]:
        """The pruner's (L + 1, B, T) plan for ``images`` and the scout output it was made from."""
        check_images(images, self.host)  # every forward plans first: one check for all of them
        budget = self._budget(budget)
        if self.online:  # the plan an online pruner makes is known once the host has run
            if budget == "static":
                self.static_counts()  # says so when the pruner has none
            _, masks = forward_online_masked(self.host, images, self.pruner, self.layout, soft=not hard)
            return masks, None
        kind = self.pruner.attention
        if self.pruner.source == "actual":
            with torch.no_grad():
                seen = forward_masked(self.host, images, attention=kind, scores_only=True)
            scout = None
        else:
            seen = scout = self.scout(images, attention=kind, scores_only=True)
        if not hard:  # soft masks keep every token partly: budgets (counts of hard sets) do not apply
            budget = "per_sample"
        masks = self.pruner.plan(seen.attention, hard=hard, budget=budget, layout=self.layout)
        if has_token_head(self.host):  # the token head reads every token the last layer takes in
            masks = torch.cat((masks[:-1], masks[-2:-1]))
        return masks, scout

    def forward_detailed(self, images: torch.Tensor, *, hard: bool | None = None, executor: str | None = None,
                         budget: str | None = None, keep_scout: bool = True) -> STTABTOutput:
        """Logits, plan and scout output; ``keep_scout=False`` lets the scout's output (its maps: one
        (B, T, T) per layer on a CPU) go before the host runs, and returns ``scout=None``."""
        hard, executor = self._resolve(hard, executor)
        if self.online:
            check_images(images, self.host)
            if self._budget(budget) == "static":
                self.static_counts()  # says so when the pruner has none
            if executor == "pruned":
                logits, masks = forward_online_pruned(self.host, images, self.pruner, self.layout)
            else:
                logits, masks = forward_online_masked(self.host, images, self.pruner, self.layout, soft=not hard)
            return STTABTOutput(logits, masks, None)
        masks, scout = self.plan(images, hard=hard, budget=budget)
        if not keep_scout:
            scout = None  # its memory is reused by the host's pass (fewer fresh pages to fault in)
        if executor == "pruned":
            counts = self.static_counts() if self._budget(budget) == "static" else None
            logits = forward_pruned(self.host, images, masks, counts)
        else:
            logits = forward_masked(self.host, images, masks).logits
        return STTABTOutput(logits, masks, scout)

    def forward(self, images: torch.Tensor, *, hard: bool | None = None, executor: str | None = None,
                budget: str | None = None) -> torch.Tensor:
        return self.forward_detailed(images, hard=hard, executor=executor, budget=budget, keep_scout=False).logits

    def get_classifier(self) -> nn.Module:
        return self.host.get_classifier()

    # ---------------------------------------------------------------------------------------------
    # timm's model contract
    # ---------------------------------------------------------------------------------------------
    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New host head(s) for ``num_classes`` classes (0: the head returns the pooled feature).
        The pooling stays the host's (the pruners' plans follow it)."""
        if global_pool not in (None, self.host.global_pool):
            raise ValueError(f"this STTABT model pools with global_pool={self.host.global_pool!r} (its plans keep the class "
                             f"token for a token head, or the averaged tokens); global_pool={global_pool!r} is "
                             "unsupported: wrap a host built with it instead")
        self.host.reset_classifier(num_classes, global_pool)
        self.num_classes = num_classes

    def _states(self, images: torch.Tensor, hard: bool | None, executor: str | None, budget: str | None,
                record: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        hard, executor = self._resolve(hard, executor)
        masks, _ = self.plan(images, hard=hard, budget=budget)
        if executor == "pruned":
            return pruned_tokens(self.host, images, masks, record=record)
        out = forward_masked(self.host, images, masks, record=record, attention="probs")
        return out.tokens, out.hidden

    def forward_features(self, images: torch.Tensor, *, hard: bool | None = None, executor: str | None = None,
                         budget: str | None = None) -> torch.Tensor:
        """Every token after the final norm, (B, T, D), CLS first, in the input order.

        A token that the plan drops carries the value it had when it was dropped: its residual stream
        passes unchanged through the layers that do not output it (the masked semantics), for both
        executors. ``forward_head(forward_features(x)) == forward(x)``; for a host whose head also reads
        the patch tokens (LV-ViT) pass the plan's last row as ``token_mask`` to keep dropped tokens out.
        """
        tokens, _ = self._states(images, hard, executor, budget, record=False)
        return self.host.norm(tokens)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False, token_mask: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """The host's head on ``forward_features`` output; ``token_mask`` (B, T): the tokens kept, e.g.
        ``forward_detailed(x).masks[-1]``, which a token head (LV-ViT's) reads and an ``avg`` head averages
        (pass it for those, or dropped tokens count too); DeiT heads read the prefix tokens only."""
        return host_forward_head(self.host, x, token_mask, pre_logits=pre_logits)

    def forward_intermediates(
        self,
        images: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        *,
        hard: bool | None = None,
        executor: str | None = None,
        budget: str | None = None,
    ):
        """timm's feature API: the outputs of the blocks ``indices`` names (an int: the last n), as
        (B, D, H, W) maps (``output_fmt="NCHW"``) or (B, N, D) tokens (``"NLC"``), dropped tokens as in
        :meth:`forward_features`; with ``intermediates_only=False`` also the final normed tokens.
        The whole model always runs (``stop_early`` is accepted and ignored: the plan needs every layer)."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        take, _ = feature_take_indices(len(self.host.blocks), indices)
        last, states = self._states(images, hard, executor, budget, record=True)
        prefix = self.host.num_prefix_tokens
        height, width = self.host.patch_embed.grid_size
        features, prefixes = [], []
        for i in take:
            x = self.host.norm(states[i + 1]) if norm else states[i + 1]
            prefixes.append(x[:, :prefix])
            x = x[:, prefix:]
            if output_fmt == "NCHW":
                x = x.reshape(x.shape[0], height, width, -1).permute(0, 3, 1, 2).contiguous()
            features.append(x)
        if return_prefix_tokens:
            features = list(zip(features, prefixes))
        if intermediates_only:
            return features
        return self.host.norm(last), features

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (masked executor, training) to save memory."""
        self.host.set_grad_checkpointing(enable)
        if self.scout is not None:
            self.scout.net.set_grad_checkpointing(enable)

    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups of the host for timm's layer-wise learning-rate decay. The scout (a network
        of its own) and the pruner's logits match no group, so they train at the full rate, with the head."""
        return dict(
            stem=r"^host\.cls_token|^host\.pos_embed|^host\.reg_token|^host\.dist_token|^host\.patch_embed",
            blocks=[(r"^host\.blocks\.(\d+)", None), (r"^host\.norm", (99999,))],
        )

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also accepts a dense host checkpoint and STTABT checkpoints of older layouts, mapped by
        :func:`sttabt.pretrained.checkpoint_filter_fn` (so timm's ``checkpoint_path=`` takes both)."""
        from .pretrained import checkpoint_filter_fn

        return super().load_state_dict(checkpoint_filter_fn(state_dict, self), strict=strict, assign=assign)

    def no_weight_decay(self) -> set[str]:
        """Parameter names to keep out of weight decay (timm's optimiser factory reads this)."""
        names = {f"host.{n}" for n in self.host.no_weight_decay()}
        if self.scout is not None:
            names |= {f"scout.net.{n}" for n in self.scout.net.no_weight_decay()}
        names |= {n for n, _ in self.named_parameters() if n.startswith("pruner.")}
        return names


def wrap(
    model: VisionTransformer,
    *,
    factor: int = DEFAULT_FACTOR,
    pruner: str | nn.Module = "concrete",
    p_logit: float = 0.0,
    keep: float | list[float] | None = None,
    budget: str | None = None,
    scout_init: str = "interpolate",
    threshold: float | None = None,
) -> STTABT:
    """Make any timm ``VisionTransformer`` an STTABT model: a head on the class token (also DeiT's
    distilled two heads) or averaging the patches (``global_pool='avg'``), with or without register
    tokens. Prefix tokens are never dropped.

    ``factor``: the scout is ``factor`` times thinner; ``pruner``: a name from
    ``sttabt.pruners.PRUNERS`` or a pruner module; ``p_logit``: initial and target per-layer logit
    of the concrete pruner (target keep ratio ``sigmoid(p_logit)``); ``keep``: keep ratio (or one per
    layer) of the top-k pruners; ``budget``: default batching mode (see :class:`STTABT`);
    ``threshold``: the final token threshold of the ``'ltp'`` pruner. The online pruners (``'ltp'``,
    ``'evit'``) read the host's own attention: such a model has no scout (``model.scout is None``).
    """
    check_host(model)
    check_depth(len(model.blocks))
    if isinstance(pruner, str):
        pruner = create_pruner(pruner, len(model.blocks), p_logit=p_logit, keep=keep, threshold=threshold)
    online = getattr(pruner, "online", False)
    scout = None if online else ApproxNet(model, factor, init=scout_init)
    return STTABT(model, scout, pruner, budget)
