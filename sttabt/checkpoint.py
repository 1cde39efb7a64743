"""Reading and writing weights: dense teachers, full STTABT checkpoints, strict loads that explain.

* :func:`load_teacher`: a dense checkpoint into a host (timm DeiT/ViT layout, or the LV-ViT
  reference layout), before or after wrapping. The scout can then be re-initialised from it.
* :func:`save_checkpoint` / :func:`load_checkpoint` / :func:`create_from_checkpoint`: the whole STTABT
  model (host, scout, pruner), written atomically (temporary file, then rename).
Every file is read by :func:`read_checkpoint`: missing, empty, truncated and foreign files raise a
:class:`CheckpointError` (a ``ValueError``) naming the file. Every load is strict: missing keys,
unexpected keys and shape mismatches raise a ``CheckpointError``
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


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: missing, empty, truncated, foreign or of another model."""


def _unreadable(path: str, err: BaseException, what: str) -> CheckpointError:
    size = os.path.getsize(path)
    if size == 0:
        return CheckpointError(f"{path} is empty (0 bytes): its writing was interrupted or the disk was full; "
                               f"replace it with a complete {what}")
    if isinstance(err, pickle.UnpicklingError) and "weights only" in str(err).lower():
        return CheckpointError(f"{path} pickles Python objects other than tensors and plain containers (a whole "
                               "model object, or another library's training state?); it is read as a state dict "
                               "only: save it again with torch.save(model.state_dict(), path)")
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":  # a zip archive, torch.save's format, cut short or damaged
        return CheckpointError(f"{path} is truncated or damaged ({size} bytes, the PyTorch archive is "
                               f"incomplete); replace it with a complete {what}")
    return CheckpointError(f"{path} is not a PyTorch checkpoint ({size} bytes that torch.load cannot read: "
                           f"{type(err).__name__}); expected a {what}")


def read_checkpoint(path: str | os.PathLike, *, what: str = "checkpoint",
                    weights_only: bool = True) -> Mapping[str, Any]:
    """``torch.load`` on CPU, the one place every checkpoint is read. Missing, empty, truncated and
    foreign files raise :class:`CheckpointError` naming the file and ``what`` was expected."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=weights_only)
    except MemoryError:
        raise
    except Exception as err:  # torch raises EOFError, RuntimeError, KeyError, UnpicklingError... by format
        raise _unreadable(path, err, what) from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a {what} (a mapping of names to tensors), got "
                              f"{type(state).__name__}")
    return state


def describe(state: Mapping[str, Any]) -> str:
    """What a checkpoint looks like it is, from its keys (for error messages)."""
    if state.get("format") == FORMAT:
        return f"a full STTABT checkpoint of {state.get('architecture') or 'an unnamed model'}"
    if {"position", "optimizer", "fingerprint"} <= set(state):
        return f"a training-state checkpoint (stage {state['fingerprint'].get('stage', '?')})"
    if "scout" in state:
        return f"an approximation-network (scout) file, factor {state.get('factor', '?')}"
    if {"state", "param_groups"} <= set(state):
        return "an optimizer state"
    inner = state
    for key in WRAPPER_KEYS:
        if isinstance(state.get(key), Mapping):
            inner = state[key]
            break
    keys = [str(k).removeprefix("module.") for k in inner]
    blocks = {k.split(".")[1] for k in keys if k.startswith("blocks.") and k.count(".") > 1}
    if blocks:
        width = getattr(inner.get("pos_embed", inner.get("module.pos_embed")), "shape", [None])[-1]
        kind = "an LV-ViT" if any(k.startswith("patch_embed.conv") for k in keys) else "a ViT/DeiT"
        return f"{kind} state dict with {len(blocks)} blocks" + (f", width {width}" if width else "")
    if any(k.startswith(("bert.", "roberta.", "encoder.layer.")) for k in keys):
        return "a BERT-family (text) model state dict"
    return f"a mapping with keys {_listed(sorted(map(str, state)))}"


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


def load_strict(module: nn.Module, state: Mapping[str, Any], what: str, source: str = "checkpoint") -> nn.Module:
    """``load_state_dict(strict=True)`` after checking keys and shapes, with a useful error naming
    ``source`` (the file)."""
    expected = module.state_dict()
    missing = sorted(k for k in expected if k not in state)
    unexpected = sorted(k for k in state if k not in expected)
    mismatched = [f"{k} (checkpoint {tuple(getattr(state[k], 'shape', ()))} vs model {tuple(v.shape)})"
                  for k, v in expected.items() if k in state and getattr(state[k], "shape", None) != v.shape]
    problems = [f"{label} ({len(keys)}): {_listed(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                if keys]
    if problems:
        raise CheckpointError(f"{source + ' ' if source else ''}does not match this {what} (the file looks like "
                              f"{describe(state)}; another model or variant?): " + "; ".join(problems))
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
    source = "the teacher checkpoint"
    if not isinstance(checkpoint, Mapping):
        source = os.fspath(checkpoint)
        checkpoint = read_checkpoint(checkpoint, what="dense teacher checkpoint", weights_only=weights_only)
    if checkpoint.get("format") == FORMAT:
        raise CheckpointError(f"{source} is a full STTABT checkpoint, not a dense teacher: use "
                              "sttabt.load_checkpoint (or give the dense model's weights)")
    state = unwrap(checkpoint)
    state = lvvit_filter(state, host) if isinstance(host, LVViT) else vit_filter(dict(state), host)
    load_strict(host, state, f"{type(host).__name__} teacher", source)
    if isinstance(model, STTABT) and reinit_scout and model.scout is not None:
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


def _read_sttabt(checkpoint: str | os.PathLike | Mapping[str, Any]) -> tuple[Mapping[str, Any], str]:
    source = "the checkpoint"
    if not isinstance(checkpoint, Mapping):
        source = os.fspath(checkpoint)
        checkpoint = read_checkpoint(checkpoint, what="STTABT checkpoint (written by sttabt.save_checkpoint)")
    if checkpoint.get("format") != FORMAT or not isinstance(checkpoint.get("state_dict"), Mapping):
        raise CheckpointError(f"{source} is not an STTABT checkpoint written by sttabt.save_checkpoint (it looks "
                              f"like {describe(checkpoint)}); for dense weights use sttabt.load_teacher")
    return checkpoint, source


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any]) -> nn.Module:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model``, strictly."""
    checkpoint, source = _read_sttabt(checkpoint)
    return _load_sttabt_state(model, checkpoint["state_dict"], source)


def _load_sttabt_state(model: nn.Module, state: Mapping[str, Any], source: str) -> nn.Module:
    from .approx import drop_distillation_keys

    state = drop_distillation_keys(state, model)  # checkpoints from before the scout split
    counts = "pruner.calibrated_counts"
    if counts not in state and counts in model.state_dict():  # checkpoints from before static budgets
        state = {**state, counts: torch.zeros_like(model.state_dict()[counts])}
    return load_strict(model, state, "STTABT model", source)


def create_from_checkpoint(checkpoint: str | os.PathLike | Mapping[str, Any], **overrides: Any) -> nn.Module:
    """Rebuild a registered STTABT model from its checkpoint (architecture and keyword arguments are
    stored in it) and load the weights; ``overrides`` change keyword arguments (e.g. ``keep``)."""
    import timm

    checkpoint, source = _read_sttabt(checkpoint)
    arch = checkpoint.get("architecture")
    if not arch:
        raise CheckpointError(f"{source} does not name a registered architecture; build the model "
                              "yourself and call sttabt.load_checkpoint(model, path)")
    model = timm.create_model(arch, **{**checkpoint.get("create_kwargs", {}), **overrides})
    return _load_sttabt_state(model, checkpoint["state_dict"], source)
