"""The dense control of the concrete stage (``--dense-control``): the dense teacher fine-tuned with the
concrete stage's recipe and KD but no masks, reported next to the concrete rows."""
from __future__ import annotations

import json

import timm
import torch

from test_train import TINY_RUN, run_dir, train_imagenet, write_config

from sttabt.train.summary import format_table, summary_rows
from sttabt.train.tasks import DenseFineTuning, logit_kd, soft_target_loss


def _host(seed: int):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", img_size=16, patch_size=4, depth=1, embed_dim=16, num_heads=2,
                             num_classes=10)


def test_dense_fine_tuning_is_cross_entropy_plus_kd_from_a_frozen_teacher():
    student, teacher = _host(0), _host(1)
    images, targets = torch.randn(4, 3, 16, 16), torch.tensor([0, 3, 5, 9])
    task = DenseFineTuning(student, teacher, smoothing=0.1, kd_weight=0.5).train()
    loss, metrics = task(images, targets)
    teacher.eval()
    with torch.no_grad():
        expected = soft_target_loss(student(images), targets, 0.1) + 0.5 * logit_kd(student(images), teacher(images))
    torch.testing.assert_close(loss.detach(), expected, atol=1e-6, rtol=0)
    assert metrics["kd"] > 0
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters()) and not teacher.training
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    same = DenseFineTuning(teacher, teacher, kd_weight=0.5)
    assert same(images, targets)[1]["kd"].abs() < 1e-6   # KD from itself is zero: only the masks differ


def test_summary_lists_the_control_next_to_the_concrete_rows():
    dense = {"top1": 90.0, "gflops": 1.0}
    control = {"top1": 91.0, "ema_top1": 91.5, "gflops": 1.0}
    concrete = [{"p_logit": 0.0, "target_keep": 0.5, "keep_mean": 0.5, "gflops": 0.6, "hard_top1": 89.0}]
    rows = summary_rows(dense, concrete, control)
    assert [r["method"] for r in rows] == ["dense", "dense_control", "sttabt_concrete"]
    assert rows[1]["hard_top1"] == 91.0 and rows[1]["ema_hard_top1"] == 91.5 and rows[1]["keep_mean"] == 1.0
    lines = format_table(rows).splitlines()
    assert lines[3].split()[:6] == ["dense+ft", "1.00", "1.00", "1.0000", "-", "91.00"]  # no timing: "-"
    assert [r["method"] for r in summary_rows(dense, concrete)] == ["dense", "sttabt_concrete"]


def _train_records(folder):
    lines = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return [r for r in lines if r["tag"] == "train"]


def test_pipeline_trains_the_dense_control_with_the_concrete_recipe(tmp_path, capsys):
    config = str(write_config(tmp_path, epochs=2, warmup_epochs=1))
    assert train_imagenet.main(["--config", config, "--dense-control"]) == 0
    assert "dense+ft" in capsys.readouterr().out
    run = run_dir(tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    dense, control, concrete = summary["rows"]
    assert (dense["method"], control["method"], concrete["method"]) == ("dense", "dense_control", "sttabt_concrete")
    assert control["gflops"] == dense["gflops"] and control["keep_mean"] == 1.0
    assert 0 <= control["hard_top1"] <= 100 and control["ema_hard_top1"] is not None
    # same steps and the same learning-rate schedule as the concrete stage; KD in both
    ours, theirs = _train_records(run / "dense_control"), _train_records(run / "concrete" / "p_logit_0")
    assert [r["step"] for r in ours] == [r["step"] for r in theirs] and len(ours) > 1
    assert [r["lr"] for r in ours] == [r["lr"] for r in theirs]
    assert all("kd" in r for r in ours) and not any("regulariser" in r for r in ours)
    results = json.loads((run / "dense_control" / "results.json").read_text())
    assert results["fingerprint"]["epochs"] == 2 and results["fingerprint"]["kd_weight"] == 0.5
    assert results["fingerprint"]["lr"] == TINY_RUN["lr"]
    # it trained: the control's weights moved away from the teacher's
    teacher = torch.load(run / "teacher" / "model.pth", map_location="cpu", weights_only=True)["model"]
    tuned = torch.load(run / "dense_control" / "model.pth", map_location="cpu", weights_only=True)["model"]
    assert tuned.keys() == teacher.keys()
    assert any(not torch.equal(tuned[k], teacher[k]) for k in teacher if teacher[k].is_floating_point())
    # a finished control is skipped on --auto-resume
    assert train_imagenet.main(["--config", config, "--dense-control", "--auto-resume"]) == 0
    assert "[dense control] finished earlier" in capsys.readouterr().out
