"""torchrun with 2 processes (gloo) where the second process fails: bad input is reported by that
process as one ``error:`` line (exit 2), an unexpected exception surfaces with its traceback, and in
both cases every process stops (no hang, no silent rank)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from test_train import ROOT, TOOL, write_config

from sttabt.train import data

TIMEOUT = 180  # seconds; a hang fails the test instead of blocking the suite


def torchrun(script: Path, config: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT),
           "HOME": str(config.parent)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           "--config", str(config), *extra]
    return subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=TIMEOUT)


def image_folder(root: Path, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i:02d}.png")


def first_image_of_rank_1(root: Path) -> str:
    """The first training image process 1 of 2 reads (batch 16, no accumulation, seed 0, epoch 0)."""
    split = data.load_split("imagefolder", str(root), "train")
    sampler = data.EpochSampler(len(split), batch_size=16, accum_steps=1, world=2, rank=1, seed=0)
    sampler.set_epoch(0)
    _, index = next(iter(sampler))
    return split.name(index)


def test_bad_image_on_rank_1_is_one_error_line_from_that_rank(tmp_path):
    image_folder(tmp_path / "data", per_class=16)
    bad = first_image_of_rank_1(tmp_path / "data")
    Path(bad).write_bytes(b"this is not a PNG")
    config = write_config(tmp_path, dataset="imagefolder", max_train_images=0, max_val_images=0)
    proc = torchrun(TOOL, config, "--data-path", str(tmp_path / "data"))
    out = proc.stdout
    assert proc.returncode != 0, out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert errors[0].startswith(f"error: [rank 1] cannot read image {bad}"), out
    assert "--skip-bad-images" in errors[0]
    assert len([e for e in errors if e.startswith("error: [rank 1]")]) == 1, "one line from the rank that found it"
    # rank 0 either stops with one line naming the cause, or is ended by torchrun first
    assert all(e == "error: [rank 0] stopped because rank 1 found bad input (its error is printed above)"
               for e in errors[1:]), out
    assert "/sttabt/" not in out and "train_imagenet.py\", line" not in out, "no traceback of ours: " + out
    assert "ChildFailedError" in out  # torchrun's report: every process ended (which one first is a race)


INJECT = '''
import os, runpy, sys
import sttabt.train.tasks as tasks

def failing_forward(self, images, targets):
    raise RuntimeError("injected failure on rank 1")

if os.environ["RANK"] == "1":
    tasks.Classification.forward = failing_forward
sys.argv = [{tool!r}, *sys.argv[1:]]
runpy.run_path({tool!r}, run_name="__main__")
'''


def test_unexpected_exception_on_rank_1_shows_its_traceback_and_stops_every_rank(tmp_path):
    script = tmp_path / "inject.py"
    script.write_text(INJECT.format(tool=str(TOOL)))
    proc = torchrun(script, write_config(tmp_path))
    out = proc.stdout
    assert proc.returncode != 0, out
    assert "RuntimeError: injected failure on rank 1" in out, out
    assert "Traceback (most recent call last)" in out and "/sttabt/train/loop.py" in out, out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert all(e.startswith("error: [rank 0] stopped because rank 1 failed (RuntimeError)") for e in errors), out
    assert out.count("Traceback (most recent call last)") == 2, "rank 1's and torchrun's own, none from rank 0"
    assert not (tmp_path / "out" / "sttabt_deit_tiny-f2" / "teacher" / "results.json").exists()
