"""timm registrations: ``timm.create_model('sttabt_deit_small', factor=4, p_logit=0.0)``.

Each STTABT model is its dense host (any keyword timm accepts passes through: ``img_size``,
``patch_size``, ``num_classes``, ``depth``...) wrapped by :func:`sttabt.wrap`, built by timm's
``build_model_with_cfg``: ``pretrained=True`` loads the dense weights its cfg tag names into the host
and interpolates the scout from them (:mod:`sttabt.pretrained`); ``pretrained_cfg_overlay=dict(file=...)``
does the same from a local file, ``checkpoint_path=`` takes a saved STTABT model or a dense host file,
``features_only=True`` gives timm's feature extractor over :meth:`STTABT.forward_intermediates`.
Host keywords choose the prefix tokens and pooling too: ``reg_tokens=4`` (register tokens),
``global_pool='avg'`` (the head averages the kept patches); ``sttabt_deit_*_distilled`` wrap the
distilled DeiTs (class and distillation tokens, their two heads averaged as timm does in eval).
"""
from __future__ import annotations

import timm
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg

from .inputs import check_depth, check_factor
from .pretrained import sttabt_cfg
from .wrap import STTABT, wrap
from . import pretrained as _pretrained

_WRAP_KWARGS = ("factor", "pruner", "p_logit", "keep", "budget", "scout_init", "threshold")
DEFAULT_OUT_INDICES = 3  # features_only: the last three blocks, as for timm's ViTs

# registered name -> dense host in timm
HOSTS = {
    "sttabt_deit_tiny": "deit_tiny_patch16_224",
    "sttabt_deit_small": "deit_small_patch16_224",
    "sttabt_deit_base": "deit_base_patch16_224",
    "sttabt_deit_tiny_distilled": "deit_tiny_distilled_patch16_224",    # class + distillation token,
    "sttabt_deit_small_distilled": "deit_small_distilled_patch16_224",  # two heads averaged
    "sttabt_deit_base_distilled": "deit_base_distilled_patch16_224",
    "sttabt_lvvit_small": "lvvit_small",
    "sttabt_lvvit_medium": "lvvit_medium",
}

# registered name with its tag -> the dense timm weights of its host
SOURCES = {
    "sttabt_deit_tiny.fb_in1k": "deit_tiny_patch16_224.fb_in1k",
    "sttabt_deit_small.fb_in1k": "deit_small_patch16_224.fb_in1k",
    "sttabt_deit_base.fb_in1k": "deit_base_patch16_224.fb_in1k",
    "sttabt_deit_tiny_distilled.fb_in1k": "deit_tiny_distilled_patch16_224.fb_in1k",
    "sttabt_deit_small_distilled.fb_in1k": "deit_small_distilled_patch16_224.fb_in1k",
    "sttabt_deit_base_distilled.fb_in1k": "deit_base_distilled_patch16_224.fb_in1k",
    "sttabt_lvvit_small.sail_in1k": "lvvit_small.sail_in1k",
    "sttabt_lvvit_medium.sail_in1k": "lvvit_medium.sail_in1k",
}
default_cfgs = generate_default_cfgs({name: sttabt_cfg(dense) for name, dense in SOURCES.items()})


def _build(*, name: str, **kwargs) -> STTABT:
    options = {k: kwargs.pop(k) for k in _WRAP_KWARGS if k in kwargs}
    try:  # before the host is built
        if "factor" in options:
            check_factor(options["factor"])
        if "depth" in kwargs:
            check_depth(kwargs["depth"])
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from None
    host = timm.create_model(HOSTS[name], pretrained=False, **kwargs)
    model = wrap(host, **options)
    model.create_kwargs = {**kwargs, **options}  # stored in checkpoints to rebuild the model
    return model


def _create(name: str, pretrained: bool, **kwargs) -> STTABT:
    out_indices = kwargs.pop("out_indices", DEFAULT_OUT_INDICES)
    if pretrained:
        cfg = resolve_pretrained_cfg(name, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                     pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
        _pretrained.check_fetchable(name, cfg)
    try:
        return build_model_with_cfg(
            _build, name, pretrained, pretrained_filter_fn=_pretrained.checkpoint_filter_fn,
            feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), name=name, **kwargs)
    except OSError as err:  # a download that failed (no network, no cached file)
        if not pretrained or _pretrained.is_local(cfg.to_dict()):
            raise
        raise ValueError(_pretrained.offline_hint(name, cfg.to_dict())) from err


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
def sttabt_deit_tiny_distilled(pretrained: bool = False, **kwargs) -> STTABT:
    return _create("sttabt_deit_tiny_distilled", pretrained, **kwargs)


@register_model
def sttabt_deit_small_distilled(pretrained: bool = False, **kwargs) -> STTABT:
    return _create("sttabt_deit_small_distilled", pretrained, **kwargs)


@register_model
def sttabt_deit_base_distilled(pretrained: bool = False, **kwargs) -> STTABT:
    return _create("sttabt_deit_base_distilled", pretrained, **kwargs)


@register_model
def sttabt_lvvit_small(pretrained: bool = False, **kwargs) -> STTABT:
    return _create("sttabt_lvvit_small", pretrained, **kwargs)


@register_model
def sttabt_lvvit_medium(pretrained: bool = False, **kwargs) -> STTABT:
    return _create("sttabt_lvvit_medium", pretrained, **kwargs)
