"""tools/train_imagenet.py: stages, bad input, exact resumption after SIGKILL, DDP == one process.

Every run uses a 2-layer, 32-wide host on 16 px digits (16 patches), a few hundred images and a
handful of optimiser steps, so that each run takes seconds.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import SHARED_DATA  # noqa: F401  (also makes sure sttabt is imported)

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "train_imagenet.py"
sys.path.insert(0, str(ROOT / "tools"))
import train_imagenet  # noqa: E402

from sttabt.train import parse_args, parse_p_logits  # noqa: E402
from sttabt.train.data import EpochSampler  # noqa: E402

MODEL = "sttabt_deit_tiny"
RUN = f"{MODEL}-f2"
TINY_RUN = {
    "model": MODEL, "model_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2, "patch_size": 4},
    "img_size": 16, "factor": 2, "dataset": "digits", "workers": 0, "interpolation": "bilinear",
    "crop_pct": 1.0, "scale": [0.6, 1.0], "hflip": 0.0, "aa": "", "reprob": 0.0, "mixup": 0.0, "cutmix": 0.0,
    "smoothing": 0.1, "color_jitter": 0.0, "drop_path": 0.0, "batch_size": 16, "total_batch_size": 32,
    "teacher_epochs": 1, "teacher_lr": 2e-3, "teacher_warmup_epochs": 0, "approx_epochs": 1, "approx_lr": 2e-3,
    "epochs": 2, "warmup_epochs": 1, "lr": 5e-4, "min_lr": 1e-5, "model_ema_decay": 0.99,
    "max_train_images": 256, "max_val_images": 48, "p_logits": "0.0", "progress": False, "tensorboard": False,
}


@pytest.fixture(autouse=True)
def one_thread():
    """In-process runs on one thread, like the subprocess ones (fast on shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_config(tmp_path: Path, **overrides) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({**TINY_RUN, "output": str(tmp_path / "out"), **overrides}))
    return path


def run_dir(tmp_path: Path) -> Path:
    return tmp_path / "out" / RUN


def final_state(tmp_path: Path, p_logit: str = "0") -> dict[str, torch.Tensor]:
    path = run_dir(tmp_path) / "concrete" / f"p_logit_{p_logit}" / "model.pth"
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]


def assert_same_state(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst <= atol, f"parameters differ by {worst}"


def train_losses(folder: Path) -> list[float]:
    lines = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if r["tag"] == "train"]


# --------------------------------------------------------------------------------------------------
# flags and configs
# --------------------------------------------------------------------------------------------------
def test_p_logits_parse_and_refuse():
    assert parse_p_logits("-1.5 -1.0, 0 1") == [-1.5, -1.0, 0.0, 1.0]
    assert parse_p_logits(["-1.5", "0.5"]) == [-1.5, 0.5]
    assert parse_p_logits([-1, 0.5]) == [-1.0, 0.5]
    for bad in ("-1 abc", "", "nan", "0 0"):
        with pytest.raises(ValueError, match="p-logits"):
            parse_p_logits(bad)


def test_config_sets_every_flag_and_command_line_wins(tmp_path):
    config = write_config(tmp_path, epochs=7)
    args = parse_args(["--config", str(config), "--lr", "0.25"])
    assert (args.epochs, args.lr, args.model_kwargs["embed_dim"]) == (7, 0.25, 32)
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    with pytest.raises(ValueError, match="unknown keys epochz"):
        parse_args(["--config", str(bad)])


def test_defaults_follow_the_reference_recipe(monkeypatch):
    monkeypatch.setenv("IMAGENET_ROOT", "/data/imagenet")
    args = parse_args([])
    assert (args.epochs, args.warmup_epochs, args.approx_epochs) == (20, 14, 30)
    assert (args.batch_size, args.total_batch_size, args.lr, args.min_lr) == (64, 512, 1e-5, 5e-7)
    assert args.data_path == "/data/imagenet" and args.p_logits == [-1.5, -1.0, -0.5, 0.0, 1.0]
    assert parse_args(["--imagenet-root", "/x"]).data_path == "/x"


def test_every_shipped_config_parses():
    for config in sorted((ROOT / "configs").glob("*.yaml")):
        args = parse_args(["--config", str(config)])
        assert args.p_logits and args.total_batch_size % args.batch_size == 0, config.name


def test_micro_batches_do_not_depend_on_the_split_over_processes():
    def micro_batches(world, accum):
        samplers = [EpochSampler(40, batch_size=4, accum_steps=accum, world=world, rank=r, seed=3) for r in range(world)]
        for s in samplers:
            s.set_epoch(2)
        streams = [list(s) for s in samplers]
        # step s, micro-batch slot m = a * world + rank
        return [streams[m % world][(s * accum + m // world) * 4:(s * accum + m // world + 1) * 4]
                for s in range(samplers[0].steps) for m in range(world * accum)]

    one = micro_batches(1, 4)
    assert micro_batches(2, 2) == micro_batches(4, 1) == one and len(one) == 8
    seen = [i for b in one for _, i in b]
    assert len(set(seen)) == len(seen) == 32                # 40 images: 2 full steps of 16, no repeats
    resumed = EpochSampler(40, batch_size=4, accum_steps=4, world=1, rank=0, seed=3)
    resumed.set_epoch(2, skip_steps=1)
    assert list(resumed) == [x for b in one[4:] for x in b] and len(resumed) == 16


# --------------------------------------------------------------------------------------------------
# bad input: clear errors before any work, nothing overwritten
# --------------------------------------------------------------------------------------------------
def expect_error(capsys, argv: list[str], match: str) -> None:
    assert train_imagenet.main(argv) == 2
    err = capsys.readouterr().err
    assert match in err, err


def test_missing_and_empty_data_folders(tmp_path, capsys):
    config = str(write_config(tmp_path, dataset="imagefolder"))
    expect_error(capsys, ["--config", config, "--data-path", str(tmp_path / "nope")], "data folder not found")
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "val" / "cat").mkdir(parents=True)
    expect_error(capsys, ["--config", config, "--data-path", str(tmp_path / "empty")], "no images")
    from PIL import Image
    Image.new("RGB", (16, 16)).save(tmp_path / "empty" / "train" / "cat" / "a.png")
    expect_error(capsys, ["--config", config, "--data-path", str(tmp_path / "empty")], "holds 1 class folder (cat)")
    (tmp_path / "empty" / "train" / "dog").mkdir()
    Image.new("RGB", (16, 16)).save(tmp_path / "empty" / "train" / "dog" / "a.png")
    expect_error(capsys, ["--config", config, "--data-path", str(tmp_path / "empty"), "--val-split", "test"],
                 "no 'test' split")
    assert not (tmp_path / "out").exists()


def test_bad_p_logits_skip_approx_and_foreign_teacher(tmp_path, capsys):
    import timm

    config = str(write_config(tmp_path))
    expect_error(capsys, ["--config", config, "--p-logits", "-1 zero"], "'zero' is not a number")
    expect_error(capsys, ["--config", config, "--skip-approx"], f"{RUN}/approx/scout.pth")
    other = timm.create_model("deit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=48, depth=2,
                              num_heads=2, num_classes=10)
    torch.save({"model": other.state_dict()}, tmp_path / "other.pth")
    expect_error(capsys, ["--config", config, "--teacher-checkpoint", str(tmp_path / "other.pth")],
                 "shape mismatches")
    assert not (run_dir(tmp_path) / "teacher").exists()


def test_pipeline_outputs_and_no_overwrite_without_auto_resume(tmp_path, capsys):
    config = str(write_config(tmp_path, p_logits="-1 1", epochs=1, warmup_epochs=0, tensorboard=True))
    assert train_imagenet.main(["--config", config]) == 0
    out = capsys.readouterr().out
    assert "p_logit" in out and "GFLOPs" in out and RUN in out
    run = run_dir(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    dense, low, high = summary["rows"]
    assert dense["method"] == "dense" and low["p_logit"] == -1 and high["p_logit"] == 1
    assert low["keep_mean"] < high["keep_mean"] <= 1 and low["gflops"] < high["gflops"] < dense["gflops"]
    assert len(low["keep_per_layer"]) == 2 and "ema_hard_top1" in low
    assert (run / "summary.csv").read_text().splitlines()[0].startswith("method,p_logit")
    for stage in ("teacher", "approx", "concrete/p_logit_-1", "concrete/p_logit_1"):
        assert (run / stage / "results.json").is_file() and (run / stage / "log.jsonl").is_file()
        assert any((run / stage / "tb").iterdir())
    import sttabt
    model = sttabt.create_from_checkpoint(run / "concrete" / "p_logit_1" / "model.pth").eval()
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)

    before = (run / "teacher" / "checkpoint.pth").read_bytes()
    expect_error(capsys, ["--config", config], "--auto-resume")
    assert (run / "teacher" / "checkpoint.pth").read_bytes() == before
    # finished stages are skipped; --skip-approx reuses the scout
    assert train_imagenet.main(["--config", config, "--auto-resume", "--skip-approx"]) == 0
    assert "finished earlier" in capsys.readouterr().out
    # a finished stage is not silently reused under other settings
    expect_error(capsys, ["--config", config, "--auto-resume", "--epochs", "3"], "finished with other settings (epochs)")


# --------------------------------------------------------------------------------------------------
# SIGKILL mid-epoch, then --auto-resume == an uninterrupted run
# --------------------------------------------------------------------------------------------------
def launch(config: Path, *extra: str, nproc: int = 1) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    else:
        cmd = [sys.executable]
    return subprocess.Popen([*cmd, str(TOOL), "--config", str(config), *extra], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    return out


RESUME_RUN = dict(mixup=0.8, cutmix=1.0, drop_path=0.1, save_every=2)  # every RNG stream in play


def test_sigkill_mid_epoch_then_auto_resume_matches_uninterrupted(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    whole.mkdir(), killed.mkdir()
    finish(launch(write_config(whole, **RESUME_RUN)))

    proc = launch(write_config(killed, **RESUME_RUN))
    target = run_dir(killed) / "concrete" / "p_logit_0" / "checkpoint.pth"
    deadline = time.time() + 240
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    state = torch.load(target, map_location="cpu", weights_only=False)
    assert state["position"]["global_step"] < 2 * 8 and not (target.parent / "results.json").exists()

    out = finish(launch(write_config(killed, **RESUME_RUN), "--auto-resume"))
    assert "resumed from" in out and "finished earlier" in out
    assert_same_state(final_state(whole), final_state(killed), atol=0)
    for name in ("results.json",):
        a = json.loads((run_dir(whole) / "concrete" / "p_logit_0" / name).read_text())
        b = json.loads((run_dir(killed) / "concrete" / "p_logit_0" / name).read_text())
        for r in (a, b):
            r.pop("fingerprint")  # names the run's own folders
            for h in (r, *r["history"]):
                h.pop("epoch_seconds")  # wall-clock time, the one thing allowed to differ
        assert a == b
    assert train_losses(run_dir(whole) / "concrete" / "p_logit_0") == \
        train_losses(run_dir(killed) / "concrete" / "p_logit_0")


# --------------------------------------------------------------------------------------------------
# torchrun, 2 processes (gloo) == one process with the same global batch
# --------------------------------------------------------------------------------------------------
def test_two_process_ddp_matches_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    # one process: batch 16 x 2 accumulation steps; two processes: batch 16 each, no accumulation
    single = launch(write_config(one))
    finish(launch(write_config(two), nproc=2))
    finish(single)
    for stage in ("teacher", "approx", "concrete/p_logit_0"):
        a, b = train_losses(run_dir(one) / stage), train_losses(run_dir(two) / stage)
        assert len(a) == len(b) > 0
        assert max(abs(x - y) for x, y in zip(a, b)) < 1e-5, stage
    assert_same_state(final_state(one), final_state(two), atol=1e-5)


def test_no_weight_decay_on_biases_norms_and_p_logits():
    from timm.optim import create_optimizer_v2

    from conftest import tiny

    model = tiny(p_logit=0.0)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=1e-3, weight_decay=0.05)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        expected = 0.0 if (p.ndim <= 1 or name.startswith("pruner.") or name.endswith(("pos_embed", "cls_token"))) else 0.05
        assert decay_of[id(p)] == expected, name
