"""Pretrained weights of the ``sttabt_*`` models, through timm's own machinery.

Each model's pretrained cfg names the dense source of its host weights in its tag
(``sttabt_deit_small.fb_in1k``: timm's ``deit_small_patch16_224.fb_in1k``; ``sttabt_lvvit_small.sail_in1k``:
the reference LV-ViT release). :func:`checkpoint_filter_fn` turns such a dense checkpoint into an
STTABT state dict: the host weights go to ``host.``, the scout is interpolated from them (section 3.1's
interpolated init), the pruner keeps its initial values. STTABT state dicts pass through, so
``pretrained=True``, ``pretrained_cfg_overlay=dict(file=...)``, ``checkpoint_path=`` and ``local-dir:``
exports all work.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import nn
from timm.models import get_pretrained_cfg
from timm.models._pretrained import PretrainedCfg

from .approx import drop_distillation_keys, interpolated_state
from .checkpoint import FORMAT, unwrap

HOST_PREFIX, SCOUT_PREFIX, PRUNER_PREFIX = "host.", "scout.net.", "pruner."


def prefixed(names: str | tuple[str, ...] | None, prefix: str = HOST_PREFIX) -> str | tuple[str, ...] | None:
    """Module names of the host (``pretrained_cfg['classifier']``, ``first_conv``) as STTABT names."""
    if names is None:
        return None
    if isinstance(names, str):
        return prefix + names
    return tuple(prefix + n for n in names)


def sttabt_cfg(dense: str) -> dict[str, Any]:
    """The pretrained cfg of an STTABT model whose host weights are timm's ``dense`` (``name.tag``):
    the dense cfg (weights' location, preprocessing) with module names moved under ``host.``."""
    cfg = get_pretrained_cfg(dense).to_dict()
    for key in ("architecture", "tag"):
        cfg.pop(key, None)
    cfg["classifier"] = prefixed(cfg.get("classifier"))
    cfg["first_conv"] = prefixed(cfg.get("first_conv"))
    cfg["notes"] = (f"host weights: timm's {dense}; the scout is interpolated from them",)
    return cfg


def offline() -> bool:
    """True when downloads are switched off (``HF_HUB_OFFLINE=1``, read now, not at import)."""
    import huggingface_hub.constants as hub

    flag = os.environ.get("HF_HUB_OFFLINE", "")
    return bool(hub.HF_HUB_OFFLINE) or flag.upper() in ("1", "ON", "YES", "TRUE")


def offline_hint(name: str, cfg: Mapping[str, Any]) -> str:
    """What to do when the weights of ``cfg`` cannot be fetched: pass a local file."""
    file = os.path.basename(cfg.get("url") or "") or "model.safetensors"
    where = cfg.get("hf_hub_id") or cfg.get("url") or "nowhere (no weights are registered)"
    return (f"{name}: pretrained=True needs its weights from {where}, which cannot be fetched here (offline). "
            f"Download the file (e.g. {file}) and pass it: timm.create_model({name!r}, pretrained=True, "
            f"pretrained_cfg_overlay=dict(file='path/to/{file}')); a saved model loads with checkpoint_path=")


def is_local(cfg: Mapping[str, Any]) -> bool:
    """True when ``cfg``'s weights come from a local file, folder or state dict (no download)."""
    return bool(cfg.get("file")) or cfg.get("state_dict") is not None or cfg.get("source") == "local-dir"


def check_fetchable(name: str, cfg: PretrainedCfg | Mapping[str, Any]) -> None:
    """``ValueError`` (with :func:`offline_hint`) when ``cfg``'s weights are remote and we are offline."""
    cfg = cfg.to_dict() if isinstance(cfg, PretrainedCfg) else dict(cfg)
    if not is_local(cfg) and (offline() or not (cfg.get("hf_hub_id") or cfg.get("url"))):
        raise ValueError(offline_hint(name, cfg))


def _host_filter(state: Mapping[str, Any], host: nn.Module) -> dict[str, Any]:
    from timm.models.vision_transformer import checkpoint_filter_fn as vit_filter

    from .models.lvvit import LVViT, checkpoint_filter_fn as lvvit_filter

    return lvvit_filter(state, host) if isinstance(host, LVViT) else vit_filter(dict(state), host)


def is_sttabt_state(state: Mapping[str, Any]) -> bool:
    return any(k.startswith((HOST_PREFIX, "scout.")) for k in state)


def checkpoint_filter_fn(state_dict: Mapping[str, Any], model: nn.Module) -> dict[str, Any]:
    """A state dict for the STTABT ``model`` from any of:

    * an STTABT state dict or checkpoint (``sttabt.save_checkpoint``, a timm export), older layouts
      included (scout parts that moved to distillation are dropped);
    * a dense host checkpoint (timm DeiT / ViT layout, or the LV-ViT reference layout; raw or under
      ``model`` / ``state_dict``), mapped by the host's own filter (position-embedding resampling,
      ...): host weights under ``host.``, the scout interpolated from them, the pruner as it is.
    Keys that fit nothing are passed on for the strict load to report.
    """
    if state_dict.get("format") == FORMAT and isinstance(state_dict.get("state_dict"), Mapping):
        state_dict = state_dict["state_dict"]
    state = dict(unwrap(state_dict))
    if is_sttabt_state(state):
        return drop_distillation_keys(state, model)
    host = _host_filter(state, model.host)
    own = model.state_dict()
    scout_shapes = {k[len(SCOUT_PREFIX):]: v for k, v in own.items() if k.startswith(SCOUT_PREFIX)}
    present = {k: v for k, v in scout_shapes.items() if k in host and isinstance(host[k], torch.Tensor)}
    scout = interpolated_state(present, host)
    out = {HOST_PREFIX + k: v for k, v in host.items()}
    out.update({SCOUT_PREFIX + k: v for k, v in scout.items()})
    out.update({k: v.clone() for k, v in own.items() if k.startswith(PRUNER_PREFIX)})
    return out
