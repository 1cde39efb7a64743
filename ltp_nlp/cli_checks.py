"""Checks the GLUE tools run on their flags before any work starts.

Every function raises ``ValueError`` with one line naming the flag or the file and what to do; the
tools print it as ``error: ...`` and exit with status 2. :func:`check_model_folder` reads only
``config.json`` and the weights file's header (safetensors) or archive index (``.bin``), never the
model, so a wrong folder is refused in a moment.
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

from .config_checks import HOST_TYPES, finite, fraction, non_negative, positive, positive_int

LTP_MODEL_TYPE = "ltp"
CONFIG_NAME = "config.json"
SAFE_WEIGHTS = "model.safetensors"
BIN_WEIGHTS = "pytorch_model.bin"
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # e.g. bert-base-uncased, FacebookAI/roberta-base

CHECKS = {"positive": positive, "non_negative": non_negative, "finite": finite, "fraction": fraction,
          "positive_int": positive_int}


def check_flags(flags: Iterable[tuple[str, str, Any]]) -> None:
    """``(flag, kind, value)`` triples, ``kind`` one of :data:`CHECKS`; ``None`` values are not given."""
    for flag, kind, value in flags:
        if value is not None:
            CHECKS[kind](flag, value)


def check_device(device: str) -> str:
    """A torch device string that this machine has (``cpu``, ``cuda``, ``cuda:1``, ``mps``)."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"--device {device!r} is not a device ({err}): use cpu or cuda") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine (torch "
                             f"{torch.__version__}); use --device cpu")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    return device


def is_hub_name(name: str) -> bool:
    """Whether ``name`` can be a Hugging Face hub model id rather than a local path."""
    return bool(HUB_NAME.match(name)) and not os.path.exists(name)


def read_config_json(folder: Path, flag: str) -> dict:
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise ValueError(f"{flag} {folder} has no {CONFIG_NAME}: pass a checkpoint folder written by save_pretrained "
                         "(tools/run_glue.py, tools/run_ltp.py)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{flag}: {path} is not valid JSON ({err}; empty or truncated?): restore it from the run "
                         "that wrote it") from None
    if not isinstance(config, dict):
        raise ValueError(f"{flag}: {path} holds a JSON {type(config).__name__}, not a configuration object")
    return config


def _check_safetensors(path: Path, flag: str) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            keys = list(f.keys())
    except Exception as err:  # noqa: BLE001  (safetensors raises its own error types)
        raise ValueError(f"{flag}: {path} is not a readable safetensors file ({type(err).__name__}: {err}; "
                         "empty or truncated?): restore it from the run that wrote it") from None
    if not keys:
        raise ValueError(f"{flag}: {path} holds no weights")


def _check_bin(path: Path, flag: str) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        raise ValueError(f"{flag}: {path} is not a readable torch weights file ({err}; empty or truncated?): "
                         "restore it from the run that wrote it") from None
    if bad is not None:
        raise ValueError(f"{flag}: {path} is damaged (bad member {bad}): restore it from the run that wrote it")


def check_weights(folder: Path, flag: str) -> Path:
    """The weights file of ``folder``, checked to be whole; ``ValueError`` when none is or it is not."""
    for name in SHARD_INDEXES:
        if (folder / name).is_file():
            return folder / name
    if (folder / SAFE_WEIGHTS).is_file():
        _check_safetensors(folder / SAFE_WEIGHTS, flag)
        return folder / SAFE_WEIGHTS
    if (folder / BIN_WEIGHTS).is_file():
        _check_bin(folder / BIN_WEIGHTS, flag)
        return folder / BIN_WEIGHTS
    raise ValueError(f"{flag} {folder} has no weights ({SAFE_WEIGHTS} or {BIN_WEIGHTS}): pass a checkpoint folder "
                     "written by save_pretrained")


def check_model_folder(path: str, flag: str, model_types: tuple[str, ...] = (LTP_MODEL_TYPE, *HOST_TYPES), *,
                       hub_ok: bool = False, advice: Callable[[str], str] | None = None) -> dict | None:
    """The ``config.json`` of the checkpoint folder ``path`` after checking it, its ``model_type`` (one of
    ``model_types``) and its weights; ``None`` for a hub name when ``hub_ok`` (checked by transformers).
    ``advice(model_type)`` adds what to do about a model type that is not allowed."""
    folder = Path(path).expanduser()
    if not folder.exists():
        if hub_ok and is_hub_name(path):
            return None
        raise ValueError(f"{flag} {path} does not exist: pass a checkpoint folder"
                         + (" or a Hugging Face hub model name" if hub_ok else ""))
    if not folder.is_dir():
        raise ValueError(f"{flag} {path} is a file: pass the checkpoint's folder (the one holding {CONFIG_NAME})")
    config = read_config_json(folder, flag)
    model_type = config.get("model_type")
    if model_type not in model_types:
        extra = f"; {advice(model_type)}" if advice else ""
        raise ValueError(f"{flag} {path} holds a {model_type!r} model (architectures "
                         f"{config.get('architectures')}): expected {', '.join(model_types)}{extra}")
    if model_type == LTP_MODEL_TYPE:
        check_ltp_fields(config, folder / CONFIG_NAME, flag)
    weights = check_weights(folder, flag)
    if weights.name == SAFE_WEIGHTS:
        check_architecture(config, weights, flag)
    return config


def check_architecture(config: dict, weights: Path, flag: str) -> None:
    """The weights are the host's that ``config`` describes: its prefix (``bert.``, ``roberta.``, ...), its
    width and vocabulary (the word embeddings) and its depth; read from the safetensors header only."""
    from safetensors import safe_open

    host = config.get("host_type") if config.get("model_type") == LTP_MODEL_TYPE else config.get("model_type")
    if host not in HOST_TYPES:
        return  # an LTP config without host_type: the loader reads it from the weight names
    with safe_open(str(weights), "pt") as f:
        keys = list(f.keys())
        # A bare encoder (``BertModel.save_pretrained``, e.g. sentence-transformers' MiniLM) has no
        # prefix; transformers adds it when a task model loads it, and so may we, for a plain host.
        bare = config.get("model_type") != LTP_MODEL_TYPE and any(k.startswith("embeddings.") for k in keys)
        prefix = "" if bare else f"{host}."
        embedding = f"{prefix}embeddings.word_embeddings.weight"
        shape = list(f.get_slice(embedding).get_shape()) if embedding in keys else None
    if not bare and not any(key.startswith(prefix) for key in keys):
        prefixes = sorted({key.split(".")[0] for key in keys})
        raise ValueError(f"{flag}: {weights} holds no {host}. weights (its keys start with {', '.join(prefixes)}): "
                         f"not the {host} model its {CONFIG_NAME} names; fix host_type / model_type there")
    expected = [config.get("vocab_size"), config.get("hidden_size")]
    if shape is not None and None not in expected and shape != expected:
        raise ValueError(f"{flag}: {weights} holds word embeddings of shape {shape} but {CONFIG_NAME} says vocab_size "
                         f"{expected[0]}, hidden_size {expected[1]}: the weights belong to another model")
    layers = {int(m.group(1)) for key in keys if (m := re.match(rf"{re.escape(prefix)}encoder\.layer\.(\d+)\.", key))}
    depth = config.get("num_hidden_layers")
    if layers and isinstance(depth, int) and max(layers) + 1 != depth:
        raise ValueError(f"{flag}: {weights} holds {max(layers) + 1} layers but {CONFIG_NAME} says num_hidden_layers "
                         f"{depth}: the weights belong to another model")


def check_ltp_fields(config: dict, where: Path, flag: str) -> None:
    """Every LTP setting of a ``config.json`` (hand-edited ones included) is valid."""
    from .configuration_ltp import FIELD_CHECKS

    for name in FIELD_CHECKS:
        if name in config:
            try:
                FIELD_CHECKS[name](name, config[name])
            except ValueError as err:
                raise ValueError(f"{flag}: {where}: {err}") from None
