"""Training state on disk: atomic checkpoints with RNG states, and JSON written the same way.

A stage folder holds ``checkpoint.pth`` (the latest complete training state; replaced atomically, so
a killed run always leaves the previous one intact) and, once the stage has finished,
``results.json``. ``--auto-resume`` continues from the former and skips stages that have the latter.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import atomic_save

CHECKPOINT = "checkpoint.pth"
RESULTS = "results.json"


@dataclass
class Position:
    """Where training stands: the next epoch and optimiser step within it, and steps done in all."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


def rng_states() -> dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def save_training_state(folder: Path, *, position: Position, fingerprint: dict, history: list[dict],
                        **states: Any) -> Path:
    """Every ``state_dict`` of ``states`` (model, optimiser, scheduler, EMA) plus position and RNG."""
    payload = {"position": asdict(position), "fingerprint": fingerprint, "history": history,
               "rng": rng_states(),
               **{k: v.state_dict() for k, v in states.items() if v is not None}}
    return Path(atomic_save(payload, folder / CHECKPOINT))


def load_training_state(folder: Path, fingerprint: dict) -> dict | None:
    """The stage's checkpoint, or None when there is none. A checkpoint written with other settings
    (another model, p-logit, batch size...) is refused: continuing it would mix two runs."""
    path = folder / CHECKPOINT
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    theirs = state.get("fingerprint", {})
    changed = sorted(k for k in set(fingerprint) | set(theirs) if fingerprint.get(k) != theirs.get(k))
    if changed:
        details = ", ".join(f"{k}: checkpoint {theirs.get(k)!r} vs now {fingerprint.get(k)!r}" for k in changed)
        raise ValueError(f"{path} was written with other settings ({details}); resume with the same "
                         "flags or choose another --output")
    return state


def write_json(path: Path, data: Any) -> Path:
    """JSON written atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_results(folder: Path) -> dict | None:
    path = folder / RESULTS
    return json.loads(path.read_text()) if path.is_file() else None
