"""Writing run folders without losing what is already there.

* :func:`check_output_dir` follows transformers' convention: a non-empty output folder is refused
  unless the user asks to overwrite it (``--overwrite_output_dir``), and resuming a run inside it is
  allowed. The tools call it before any model is loaded, so a refused run writes nothing.
* :func:`write_json`, :func:`save_pretrained_atomically` and :func:`save_trainer_model` write each file
  through a temporary file renamed over its target (:func:`sttabt.checkpoint.atomic_write`): an
  interrupted write never leaves a truncated ``config.json``, weights file or ``eval_results.json``,
  and the previous file stays whole until the rename.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from sttabt.checkpoint import atomic_write

OVERWRITE_FLAG = "--overwrite_output_dir"


class OutputExistsError(ValueError):
    """The output folder (or file) already holds another run's results."""


def folder_is_empty(folder: str | os.PathLike) -> bool:
    """True when ``folder`` does not exist or holds nothing."""
    folder = Path(folder)
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir()))


def check_output_dir(folder: str | os.PathLike, *, overwrite: bool, flag: str = "--output_dir",
                     resuming: bool = False) -> None:
    """Refuse a non-empty ``folder`` (``OutputExistsError``) unless ``overwrite`` or ``resuming``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{flag} {folder} is a file, not a folder: choose another {flag}")
    if overwrite or resuming or folder_is_empty(folder):
        return
    held = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
    raise OutputExistsError(f"{flag} {folder} already holds a run ({shown}): pass {OVERWRITE_FLAG} to replace "
                            f"it, or choose another {flag}")


def check_output_file(path: str | os.PathLike, *, overwrite: bool, flag: str = "--output") -> None:
    """Refuse to replace an existing file ``path`` (``OutputExistsError``) unless ``overwrite``."""
    path = Path(path)
    if path.is_dir():
        raise OutputExistsError(f"{flag} {path} is a folder: pass a file name")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{flag} {path} already exists (another run's results): pass {OVERWRITE_FLAG} "
                                f"to replace it, or choose another {flag}")


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented JSON, written atomically."""
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda f: f.write(text), mode="w")
    return Path(path)


def move_files_into(source: str | os.PathLike, target: str | os.PathLike) -> list[Path]:
    """Move every file of ``source`` (recursively) into ``target`` by ``os.replace`` (atomic per file,
    ``source`` and ``target`` on the same file system); returns the target paths."""
    source, target = Path(source), Path(target)
    moved = []
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, destination)
        moved.append(destination)
    return moved


SCRATCH_PREFIX = ".saving-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's live process
        return True
    return True


def remove_stale_scratch(folder: str | os.PathLike) -> list[Path]:
    """Remove the scratch folders (``.saving-<pid>-*``) that a killed save left in ``folder``: those
    whose process is gone, and those of the older unnamed layout; returns what was removed."""
    removed = []
    for path in Path(folder).glob(SCRATCH_PREFIX + "*"):
        pid = path.name[len(SCRATCH_PREFIX):].split("-")[0]
        if path.is_dir() and not (pid.isdigit() and _alive(int(pid))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def save_atomically(save: Callable[[str], Any], folder: str | os.PathLike) -> list[Path]:
    """Run ``save(scratch_folder)`` (e.g. ``model.save_pretrained``) in a scratch folder beside ``folder``,
    then move each file it wrote into ``folder``: no file of ``folder`` is ever half written. Scratch
    folders left by a save that was killed are removed first."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_scratch(folder)
    scratch = tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=folder)
    try:
        save(scratch)
        return move_files_into(scratch, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def save_trainer_model(trainer, folder: str | os.PathLike) -> list[Path]:
    """``trainer.save_model(folder)`` (model, config, tokenizer, training arguments), atomically per file."""
    return save_atomically(trainer.save_model, folder)
