"""Training state on disk: atomic checkpoints with RNG states, and JSON written the same way.

A stage folder holds ``checkpoint.pth`` (the latest complete training state) and
``checkpoint_prev.pth`` (the one before), and, once the stage has finished, ``results.json``.
``--auto-resume`` continues from the newest readable checkpoint and skips stages that have results.
A new checkpoint is written completely (``checkpoint_next.pth``, fsynced) before the two are rotated,
so a run killed at any moment leaves at least one complete checkpoint; a damaged newest checkpoint
(a full disk, a file system that lost the write) is set aside, never deleted, with a warning, and the
run continues from the previous one. Checkpoints hold tensors and plain containers only, so they are
read with ``weights_only=True``.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import CheckpointError, atomic_save, atomic_write, read_checkpoint
from .errors import InputError

CHECKPOINT = "checkpoint.pth"
PREVIOUS = "checkpoint_prev.pth"
NEXT = "checkpoint_next.pth"           # only between writing a checkpoint and rotating it in
CANDIDATES = (NEXT, CHECKPOINT, PREVIOUS)  # newest first, whenever a run stopped
DAMAGED_SUFFIX = ".damaged"
STATE_KEYS = ("position", "fingerprint", "history", "rng", "model", "optimizer")
RESULTS = "results.json"


@dataclass
class Position:
    """Where training stands: the next epoch and optimiser step within it, and steps done in all."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


def rng_states() -> dict[str, Any]:
    """The RNG states as tensors and plain containers (numpy's key as a list of ints)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(), "numpy": (name, keys.tolist(), pos, has_gauss, gauss),
              "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_training_state(folder: Path, *, position: Position, fingerprint: dict, history: list[dict],
                        **states: Any) -> Path:
    """Every ``state_dict`` of ``states`` (model, optimiser, scheduler, EMA) plus position and RNG,
    as the new ``checkpoint.pth``; the one it replaces becomes ``checkpoint_prev.pth``."""
    payload = {"position": asdict(position), "fingerprint": fingerprint, "history": history,
               "rng": rng_states(),
               **{k: v.state_dict() for k, v in states.items() if v is not None}}
    atomic_save(payload, folder / NEXT)
    if (folder / CHECKPOINT).exists():
        os.replace(folder / CHECKPOINT, folder / PREVIOUS)
    os.replace(folder / NEXT, folder / CHECKPOINT)
    return folder / CHECKPOINT


def _read_state(path: Path) -> dict:
    state = read_checkpoint(path, what="training checkpoint (checkpoint.pth)")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint (no {', '.join(missing)}); it looks "
                              f"like something else was saved under this name")
    return dict(state)


@dataclass
class Found:
    """The newest readable training checkpoint of a stage folder, and the damaged newer ones."""
    state: dict | None
    path: Path | None
    damaged: list[tuple[Path, str]]


def find_training_state(folder: Path, fingerprint: dict) -> Found:
    """Read the stage's checkpoints newest first; a damaged one is passed over (and listed). A
    checkpoint written with other settings (another model, p-logit, batch size...) is refused:
    continuing it would mix two runs. Nothing on disk is changed."""
    damaged = []
    for name in CANDIDATES:
        path = folder / name
        if not path.is_file():
            continue
        try:
            state = _read_state(path)
        except CheckpointError as err:
            damaged.append((path, str(err)))
            continue
        theirs = state.get("fingerprint", {})
        changed = sorted(k for k in set(fingerprint) | set(theirs) if fingerprint.get(k) != theirs.get(k))
        if changed:
            details = ", ".join(f"{k}: checkpoint {theirs.get(k)!r} vs now {fingerprint.get(k)!r}" for k in changed)
            raise InputError(f"{path} was written with other settings ({details}); resume with the same "
                             "flags or choose another --output")
        return Found(state, path, damaged)
    if damaged:
        raise InputError(f"no usable training checkpoint in {folder}: " + "; ".join(e for _, e in damaged)
                         + f". Remove {folder} to train that stage again")
    return Found(None, None, [])


def set_aside(path: Path) -> Path:
    """Rename a damaged checkpoint out of the rotation (``checkpoint.pth.damaged``, ``...damaged.2``)."""
    aside, n = path.with_name(path.name + DAMAGED_SUFFIX), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}{DAMAGED_SUFFIX}.{n}")
    os.replace(path, aside)
    return aside


def write_json(path: Path, data: Any) -> Path:
    """JSON written atomically (temporary file, fsync, then rename)."""
    def write(f):
        json.dump(data, f, indent=2)
        f.write("\n")

    return Path(atomic_write(path, write, mode="w"))


def read_results(folder: Path) -> dict | None:
    """A stage's ``results.json`` (None when the stage has not finished); a damaged one is refused."""
    path = folder / RESULTS
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path} is damaged (not complete JSON: {err.msg if hasattr(err, 'msg') else err}); "
                         "remove it and run again with --auto-resume: the stage is finished again from its "
                         "last checkpoint (or trained anew without one)") from None
    if not isinstance(results, dict):
        raise InputError(f"{path} is not a stage's results (a JSON object); remove it and run again with "
                         "--auto-resume")
    return results
