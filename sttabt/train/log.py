"""What a stage reports: a JSON-lines log, TensorBoard scalars (and pictures) and a tqdm bar, on rank 0 only."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write

LOG = "log.jsonl"


def _records_up_to(path: Path, step: int) -> list[str]:
    """Complete lines of an earlier log with ``step <= step`` (a resumed run rewrites the rest)."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    return kept


class StageLog:
    """``log(record)`` appends a JSON line and writes its numbers to TensorBoard under ``tag/``."""

    def __init__(self, folder: Path, *, enabled: bool, resume_step: int = 0, tensorboard: bool = True):
        self.enabled = enabled
        self.path = folder / LOG
        self.writer = None
        if not enabled:
            return
        folder.mkdir(parents=True, exist_ok=True)
        kept = _records_up_to(self.path, resume_step) if self.path.exists() and resume_step else []
        text = "".join(line + "\n" for line in kept)
        atomic_write(self.path, lambda f: f.write(text), mode="w")  # a kill here keeps the old log
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            # purge_step drops events a killed run wrote after its last checkpoint
            self.writer = SummaryWriter(str(folder / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, tag: str, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"tag": tag, "step": step, **values}) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self.writer.add_scalar(f"{tag}/{key}", value, step)

    @property
    def tensorboard(self) -> bool:
        """True where this log writes TensorBoard events (rank 0, TensorBoard on)."""
        return self.writer is not None

    def images(self, step: int, pictures: dict[str, Any]) -> None:
        """Write ``{tag: H x W x 3 uint8 array}`` pictures to TensorBoard (nothing without it)."""
        if self.writer is not None:
            for tag, picture in pictures.items():
                self.writer.add_image(tag, picture, step, dataformats="HWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
