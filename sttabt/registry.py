"""timm registrations: ``timm.create_model('sttabt_deit_small', factor=4, p_logit=0.0)``.

Each STTABT model is its dense host (any keyword timm accepts passes through: ``img_size``,
``patch_size``, ``num_classes``, ``depth``...) wrapped by :func:`sttabt.wrap`. Weights are never
downloaded: load a dense teacher with :func:`sttabt.load_teacher` or a full checkpoint with
:func:`sttabt.load_checkpoint`.
"""
from __future__ import annotations

import timm
from timm.models import register_model

from .inputs import check_depth, check_factor
from .wrap import STTABT, wrap

_WRAP_KWARGS = ("factor", "pruner", "p_logit", "keep", "budget", "scout_init")

# registered name -> dense host in timm
HOSTS = {
    "sttabt_deit_tiny": "deit_tiny_patch16_224",
    "sttabt_deit_small": "deit_small_patch16_224",
    "sttabt_deit_base": "deit_base_patch16_224",
    "sttabt_lvvit_small": "lvvit_small",
    "sttabt_lvvit_medium": "lvvit_medium",
}


def _create(name: str, pretrained: bool, **kwargs) -> STTABT:
    if pretrained:
        raise ValueError(f"{name}: no weights are downloaded; create it with pretrained=False and "
                         "load a dense teacher with sttabt.load_teacher(model, path) or a saved STTABT "
                         "checkpoint with sttabt.load_checkpoint(model, path)")
    options = {k: kwargs.pop(k) for k in _WRAP_KWARGS if k in kwargs}
    try:  # before the host is built
        if "factor" in options:
            check_factor(options["factor"])
        if "depth" in kwargs:
            check_depth(kwargs["depth"])
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    host = timm.create_model(HOSTS[name], pretrained=False, **kwargs)
    model = wrap(host, **options)
    model.create_kwargs = {**kwargs, **options}  # stored in checkpoints to rebuild the model
    model.pretrained_cfg = dict(model.pretrained_cfg, architecture=name)
    model.default_cfg = model.pretrained_cfg
    return model


@register_model
def sttabt_deit_tiny(pretrained: bool = False, **kwargs) -> STTABT:
    return _create("sttabt_deit_tiny", pretrained, **kwargs)


@register_model
def sttabt_deit_small(pretrained: bool = False, **kwargs) -> STTABT:
    return _create("sttabt_deit_small", pretrained, **kwargs)


@register_model
def sttabt_deit_base(pretrained: bool = False, **kwargs) -> STTABT:
    return _create("sttabt_deit_base", pretrained, **kwargs)


@register_model
def sttabt_lvvit_small(pretrained: bool = False, **kwargs) -> STTABT:
    return _create("sttabt_lvvit_small", pretrained, **kwargs)


@register_model
def sttabt_lvvit_medium(pretrained: bool = False, **kwargs) -> STTABT:
    return _create("sttabt_lvvit_medium", pretrained, **kwargs)
