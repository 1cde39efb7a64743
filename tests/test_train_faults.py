"""Nothing written is ever lost: a run copied elsewhere resumes there, a damaged newest checkpoint
falls back to the previous one, a run killed inside a checkpoint save resumes to where an
uninterrupted run ends, and a refused --auto-resume changes nothing (args.yaml included)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from test_train import RESUME_RUN, RUN, assert_same_state, train_imagenet, train_losses, write_config

import sttabt.train.state as state

CONCRETE = Path(RUN) / "concrete" / "p_logit_0"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run of this module on one thread, like the subprocess runs (fast on shared cores, and
    the same arithmetic for the uninterrupted and the resumed runs)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def whole(tmp_path_factory, one_thread) -> Path:
    """An uninterrupted run (in this process, like every resumed run below): tmp/out/<run>."""
    tmp = tmp_path_factory.mktemp("whole")
    assert train_imagenet.main(["--config", str(write_config(tmp, **RESUME_RUN))]) == 0
    return tmp / "out"


def copy_run(whole: Path, tmp_path: Path) -> Path:
    out = tmp_path / "elsewhere" / "out"
    shutil.copytree(whole, out)
    return out


def config_for(out: Path, **overrides) -> str:
    return str(write_config(out.parent, **RESUME_RUN, **overrides))


def unfinish(stage: Path) -> None:
    for name in ("results.json", "model.pth", "model_ema.pth"):
        (stage / name).unlink()


def comparable(results: dict) -> dict:
    for record in (results, *results["history"]):
        record.pop("epoch_seconds")  # wall-clock time, the one thing allowed to differ
    return results


def assert_ends_like(whole: Path, out: Path) -> None:
    a, b = whole / CONCRETE, out / CONCRETE
    assert_same_state(torch.load(a / "model.pth", weights_only=True)["state_dict"],
                      torch.load(b / "model.pth", weights_only=True)["state_dict"], atol=0)
    assert comparable(json.loads((a / "results.json").read_text())) == \
        comparable(json.loads((b / "results.json").read_text()))
    assert train_losses(a) == train_losses(b)


def test_training_checkpoints_are_two_and_hold_only_tensors_and_plain_data(whole):
    stage = whole / CONCRETE
    newest = torch.load(stage / state.CHECKPOINT, weights_only=True)
    previous = torch.load(stage / state.PREVIOUS, weights_only=True)
    assert newest["position"]["global_step"] == 16 and previous["position"]["global_step"] == 14
    assert not (stage / state.NEXT).exists()


def test_copied_run_spelled_otherwise_with_a_truncated_newest_checkpoint_resumes(whole, tmp_path, capsys):
    out = copy_run(whole, tmp_path)
    stage = out / CONCRETE
    unfinish(stage)
    newest = stage / state.CHECKPOINT
    cut = newest.read_bytes()[: newest.stat().st_size // 3]  # a crash while writing, a full disk
    newest.write_bytes(cut)
    (out.parent / "sub").mkdir()
    spelled = out.parent / "sub" / ".." / "out"
    assert train_imagenet.main(["--config", config_for(out), "--output", str(spelled), "--auto-resume"]) == 0
    printed = capsys.readouterr().out
    assert "[teacher] finished earlier" in printed and "[approx] finished earlier" in printed
    assert f"warning: [concrete p_logit=0] {spelled / CONCRETE / state.CHECKPOINT} is truncated" in printed
    assert f"resumed from {spelled / CONCRETE / state.PREVIOUS}: epoch 1, step 14/16" in printed
    kept = stage / (state.CHECKPOINT + state.DAMAGED_SUFFIX)
    assert kept.read_bytes() == cut, "the damaged file is kept, not deleted"
    assert_ends_like(whole, out)


class Killed(BaseException):
    """Stands for SIGKILL: nothing catches it, nothing after it runs."""


def run_until_killed(out: Path, monkeypatch, moment: str, at_save: int) -> None:
    """Run with --auto-resume and stand a kill inside the ``at_save``-th checkpoint save of the
    concrete stage: after its file is complete but before the rotation, or between the two renames."""
    saves, real_save, real_replace = [], state.atomic_save, os.replace

    def save(payload, path):
        real_save(payload, path)
        saves.append(path)
        if moment == "after_writing" and len(saves) == at_save:
            raise Killed  # checkpoint_next.pth complete, not yet rotated in

    def replace(src, dst):
        real_replace(src, dst)
        if moment == "between_renames" and len(saves) == at_save and str(dst).endswith(state.PREVIOUS):
            raise Killed  # checkpoint.pth gone to checkpoint_prev.pth, the new one still _next

    monkeypatch.setattr(state, "atomic_save", save)
    monkeypatch.setattr(state.os, "replace", replace)
    with pytest.raises(Killed):
        train_imagenet.main(["--config", config_for(out), "--auto-resume"])
    monkeypatch.undo()
    stage = out / CONCRETE
    assert (stage / state.NEXT).is_file() and not (stage / "results.json").exists()
    assert (stage / state.CHECKPOINT).is_file() == (moment == "after_writing")


def test_killed_inside_checkpoint_saves_then_auto_resume_ends_like_uninterrupted(whole, tmp_path, monkeypatch,
                                                                                capsys):
    out = copy_run(whole, tmp_path)
    shutil.rmtree(out / CONCRETE)  # teacher and scout kept: only the concrete stage runs again
    run_until_killed(out, monkeypatch, "after_writing", at_save=3)       # at step 6 of 16
    run_until_killed(out, monkeypatch, "between_renames", at_save=2)     # 2 saves after resuming: step 10
    assert "resumed from" in capsys.readouterr().out
    assert train_imagenet.main(["--config", config_for(out), "--auto-resume"]) == 0
    assert f"resumed from {out / CONCRETE / state.NEXT}: epoch 1, step 10/16" in capsys.readouterr().out
    assert_ends_like(whole, out)


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def refused(capsys, out: Path, *flags: str, **config) -> str:
    before = snapshot(out)
    assert train_imagenet.main(["--config", config_for(out, **config), "--auto-resume", *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert snapshot(out) == before, "a refused --auto-resume changes nothing, args.yaml included"
    return err


def test_refused_auto_resume_changes_nothing(whole, tmp_path, capsys):
    out = copy_run(whole, tmp_path)
    assert "teacher finished with other settings (epochs)" in refused(capsys, out, "--teacher-epochs", "2")
    assert "finished with other settings (p_logit)" not in refused(capsys, out, "--lr", "1e-3")


def test_damaged_files_of_a_run_are_named_before_any_work(whole, tmp_path, capsys):
    out = copy_run(whole, tmp_path)
    results = out / RUN / "approx" / "results.json"
    results.write_text(results.read_text()[:40])
    err = refused(capsys, out)
    assert f"{results} is damaged (not complete JSON" in err and "remove it" in err, err
    shutil.copy(whole / RUN / "approx" / "results.json", results)

    scout = out / RUN / "approx" / "scout.pth"
    scout.write_bytes(b"")
    assert f"{scout} is empty (0 bytes)" in refused(capsys, out)
    shutil.copy(whole / RUN / "approx" / "scout.pth", scout)

    stage = out / CONCRETE
    unfinish(stage)
    for name in (state.CHECKPOINT, state.PREVIOUS):
        (stage / name).write_bytes((stage / name).read_bytes()[:100])
    err = refused(capsys, out)
    assert f"no usable training checkpoint in {stage}" in err and "Remove" in err, err
    assert "weights_only" not in err


def test_what_a_stage_depends_on_does_not_depend_on_the_number_of_processes(tmp_path):
    from sttabt.train import data, parse_args
    from sttabt.train.distributed import Dist
    from sttabt.train.stages import Run

    args = parse_args(["--config", config_for(tmp_path / "out")])
    split = data.load_split("digits", None, "train")
    one, two = (Run(args, Dist(world=w), None, tmp_path / "run", split, split).concrete_fingerprint(0.0)
                for w in (1, 2))
    assert (one.pop("world"), two.pop("world")) == (1, 2)
    assert one == two, "finished teacher and scout are recognised whatever the number of processes"
    assert "/" not in json.dumps(one), "no paths: a moved run is the same run"
