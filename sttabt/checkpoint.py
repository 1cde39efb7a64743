"""Reading and writing weights: dense teachers, full STTABT checkpoints, strict loads that explain.

* :func:`load_teacher`: a dense checkpoint into a host (timm DeiT/ViT layout, or the LV-ViT
  reference layout), before or after wrapping. The scout can then be re-initialised from it.
* :func:`save_checkpoint` / :func:`load_checkpoint` / :func:`create_from_checkpoint`: the whole STTABT
  model (host, scout, pruner), written atomically (temporary file, then rename).
Every load is strict: missing keys, unexpected keys and shape mismatches raise a ``ValueError``
that lists them; nothing is loaded partially.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from typing import IO, Any, Callable, Mapping

import torch
from torch import nn

FORMAT = "sttabt"
FORMAT_VERSION = 1
MAX_LISTED_KEYS = 12
WRAPPER_KEYS = ("model", "state_dict", "state_dict_ema")


def read_checkpoint(path: str | os.PathLike, *, weights_only: bool = True) -> Mapping[str, Any]:
    """``torch.load`` on CPU with errors that say what to do."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} holds more than tensors and cannot be read with weights_only=True; "
                         "if you trust the file, pass weights_only=False") from err
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a state dict (a mapping), got {type(state).__name__}")
    return state


def unwrap(checkpoint: Mapping[str, Any]) -> Mapping[str, Any]:
    """The state dict inside a training checkpoint (``model`` / ``state_dict`` / ``state_dict_ema``),
    with a DataParallel/DDP ``module.`` prefix removed."""
    for key in WRAPPER_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    prefix = "module."
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in checkpoint.items()}


def _listed(keys: list[str]) -> str:
    more = f", ... (+{len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else ""
    return ", ".join(keys[:MAX_LISTED_KEYS]) + more


def load_strict(module: nn.Module, state: Mapping[str, Any], what: str) -> nn.Module:
    """``load_state_dict(strict=True)`` after checking keys and shapes, with a useful error."""
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = [f"{k} (checkpoint {tuple(getattr(state[k], 'shape', ()))} vs model {tuple(v.shape)})"
                  for k, v in expected.items() if k in state and getattr(state[k], "shape", None) != v.shape]
    problems = [f"{label} ({len(keys)}): {_listed(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                if keys]
    if problems:
        raise ValueError(f"checkpoint does not match this {what} (another model or variant?): "
                         + "; ".join(problems))
    module.load_state_dict(state, strict=True)
    return module


def load_teacher(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any], *,
                 reinit_scout: bool = True, weights_only: bool = True) -> nn.Module:
    """Load dense weights into a host or into the host of an STTABT model.

    timm DeiT / ViT checkpoints go through timm's ``checkpoint_filter_fn`` (position-embedding
    resampling, ...), LV-ViT reference checkpoints through ours. With ``reinit_scout`` the scout of
    an STTABT model is re-initialised from the loaded teacher (interpolated init).
    """
    from timm.models.vision_transformer import checkpoint_filter_fn as vit_filter

    from .models.lvvit import LVViT, checkpoint_filter_fn as lvvit_filter
    from .wrap import STTABT

    host = model.host if isinstance(model, STTABT) else model
    if not isinstance(checkpoint, Mapping):
        checkpoint = read_checkpoint(checkpoint, weights_only=weights_only)
    if checkpoint.get("format") == FORMAT:
        raise ValueError("this is a full STTABT checkpoint, not a dense teacher: use sttabt.load_checkpoint")
    state = unwrap(checkpoint)
    state = lvvit_filter(state, host) if isinstance(host, LVViT) else vit_filter(dict(state), host)
    load_strict(host, state, f"{type(host).__name__} teacher")
    if isinstance(model, STTABT) and reinit_scout:
        model.scout.reset_from(host)
    return model


def atomic_write(path: str | os.PathLike, write: Callable[[IO], Any], mode: str = "wb") -> str:
    """Call ``write(file)`` on a temporary file in the same folder, fsync, then rename over ``path``: an
    interrupted write never leaves a truncated file, and the previous file stays until the rename."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_save(payload: Any, path: str | os.PathLike) -> str:
    """``torch.save`` through :func:`atomic_write`."""
    return atomic_write(path, lambda f: torch.save(payload, f))


def save_checkpoint(model: nn.Module, path: str | os.PathLike, **extra: Any) -> str:
    """Write an STTABT model atomically (:func:`atomic_save`); ``extra`` is stored alongside."""
    payload = {
        "format": FORMAT, "version": FORMAT_VERSION,
        "architecture": getattr(model, "pretrained_cfg", {}).get("architecture"),
        "create_kwargs": dict(getattr(model, "create_kwargs", {}) or {}),
        "state_dict": model.state_dict(), **extra,
    }
    return atomic_save(payload, path)


def _read_sttabt(checkpoint: str | os.PathLike | Mapping[str, Any]) -> Mapping[str, Any]:
    if not isinstance(checkpoint, Mapping):
        checkpoint = read_checkpoint(checkpoint)
    if checkpoint.get("format") != FORMAT:
        raise ValueError("not an STTABT checkpoint (written by sttabt.save_checkpoint); "
                         "for dense weights use sttabt.load_teacher")
    return checkpoint


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any]) -> nn.Module:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model``, strictly."""
    from .approx import drop_distillation_keys

    checkpoint = _read_sttabt(checkpoint)
    state = drop_distillation_keys(checkpoint["state_dict"], model)  # checkpoints from before the scout split
    return load_strict(model, state, "STTABT model")


def create_from_checkpoint(checkpoint: str | os.PathLike | Mapping[str, Any], **overrides: Any) -> nn.Module:
    """Rebuild a registered STTABT model from its checkpoint (architecture and keyword arguments are
    stored in it) and load the weights; ``overrides`` change keyword arguments (e.g. ``keep``)."""
    import timm

    checkpoint = _read_sttabt(checkpoint)
    arch = checkpoint.get("architecture")
    if not arch:
        raise ValueError("the checkpoint does not name a registered architecture; build the model "
                         "yourself and call sttabt.load_checkpoint(model, path)")
    model = timm.create_model(arch, **{**checkpoint.get("create_kwargs", {}), **overrides})
    return load_checkpoint(model, checkpoint)
