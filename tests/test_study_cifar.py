"""The image study: schedules, GFLOPs matching, rows against the dense control, and the tool end to end."""
import json
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from PIL import Image

from sttabt import study
from sttabt.flops import sttabt_flops
from sttabt.pruners import create_pruner
from sttabt.wrap import STTABT

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import study_cifar  # noqa: E402

HOST = dict(img_size=32, patch_size=8, depth=3, embed_dim=32, num_heads=2, num_classes=3)


def test_schedules():
    assert study.schedule("abt", 3, 0.4) == [0.4, 0.4, 0.4]
    assert study.schedule("manual", 4, 0.5) == [1.0, 0.5, 0.25, 0.125]
    assert study.schedule("evit", 2, 1.0) == study.schedule("evit_scout", 2, 1.0) == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"r must lie in \(0, 1\]"):
        study.schedule("abt", 3, 0.0)
    with pytest.raises(ValueError, match="no schedule for pruner 'concrete'"):
        study.schedule("concrete", 3, 0.5)


def test_match_finds_the_closest_point_of_a_monotone_cost():
    steps = [0.2 * round(5 * r) for r in [i / 100 for i in range(101)]]  # a staircase, like token counts
    r, value = study.match(lambda r: 0.2 * round(5 * r), 0.61)
    assert value in steps and abs(value - 0.6) < 1e-9 and 0.5 <= r <= 0.7
    r, value = study.match(lambda r: 10 * r, 2.5)
    assert abs(value - 2.5) < 1e-4 and study.matched(value, 2.5)
    assert not study.matched(1.0, 2.5)
    with pytest.raises(ValueError, match="positive number"):
        study.match(lambda r: r, 0.0)


def summary(teacher=50.0, control=53.0):
    return {"rows": [
        {"method": "dense", "p_logit": None, "keep_mean": 1.0, "keep_per_layer": None, "gflops": 0.02, "hard_top1": teacher},
        {"method": "dense_control", "p_logit": None, "keep_mean": 1.0, "keep_per_layer": None, "gflops": 0.02,
         "hard_top1": control},
        {"method": "sttabt_concrete", "p_logit": 0.0, "keep_mean": 0.5, "keep_per_layer": [0.7, 0.5, 0.3],
         "gflops": 0.009, "hard_top1": 51.0}]}


def test_trained_rows_compare_with_teacher_and_control():
    rows = study.trained_rows(summary(), 10, "cmd")
    assert [r["method"] for r in rows] == ["dense_teacher", "dense_control", "sttabt_concrete"]
    assert [r["extra_epochs"] for r in rows] == [0, 10, 10]
    concrete = rows[2]
    assert concrete["relative_gflops"] == pytest.approx(0.45)
    assert concrete["vs_dense_teacher"] == pytest.approx(1.0) and concrete["vs_dense_control"] == pytest.approx(-2.0)
    no_control = {"rows": [r for r in summary()["rows"] if r["method"] != "dense_control"]}
    with pytest.raises(ValueError, match="--dense-control"):
        study.trained_rows(no_control, 10, "cmd")


def _run_folder(tmp_path: Path, concrete_gflops: float) -> Path:
    """A run folder as tools/train_imagenet.py leaves it: teacher weights, distilled scout, summary."""
    folder = tmp_path / "run" / "sttabt_deit_tiny-f4"
    model = timm.create_model("sttabt_deit_tiny", factor=4, **HOST)
    (folder / "teacher").mkdir(parents=True)
    (folder / "approx").mkdir()
    torch.save(model.host.state_dict(), folder / "teacher" / "model.pth")
    torch.save({"scout": model.scout.state_dict(), "factor": 4}, folder / "approx" / "scout.pth")
    kwargs = {k: v for k, v in HOST.items() if k not in ("img_size", "num_classes")}
    args = dict(model="sttabt_deit_tiny", img_size=32, num_classes=3, factor=4, model_kwargs=kwargs,
                epochs=2, warmup_epochs=0, lr=1e-3, p_logits="0", data_path="data", output=str(tmp_path / "run"))
    (folder / "args.yaml").write_text(yaml.safe_dump(args))
    rows = summary()["rows"]
    dense = sttabt_flops(model, torch.ones(HOST["depth"] + 1, 1, 17)).dense.gflops
    for r in rows:
        r["gflops"] = dense if r["method"] != "sttabt_concrete" else concrete_gflops * dense
    (folder / "summary.json").write_text(json.dumps({"rows": rows}))
    return folder, model


def test_tool_matches_gflops_and_scores_every_image(tmp_path):
    folder, model = _run_folder(tmp_path, concrete_gflops=0.6)
    data = tmp_path / "test"
    g = torch.Generator().manual_seed(0)
    for cls in ("a", "b", "c"):
        for i in range(4):
            (data / cls).mkdir(parents=True, exist_ok=True)
            pixels = torch.randint(0, 256, (32, 32, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(data / cls / f"{i}.png")
    out = tmp_path / "cifar_study.json"
    assert study_cifar.main([str(folder), "--data", str(data), "--out", str(out), "--batch-size", "5"]) == 0
    report = json.loads(out.read_text())
    rows = {r["method"]: r for r in report["rows"]}
    assert report["images"] == 12 and set(rows) == {"dense_teacher", "dense_control", "sttabt_concrete", "abt",
                                                    "manual", "evit_scout", "evit"}
    images = torch.stack([study_cifar.eval_transform(model)(Image.open(p).convert("RGB"))
                          for cls in ("a", "b", "c") for p in sorted((data / cls).iterdir())])
    labels = torch.arange(3).repeat_interleave(4)
    for name in ("abt", "manual", "evit_scout", "evit"):
        r = rows[name]
        assert r["target_gflops"] == rows["sttabt_concrete"]["gflops"]
        assert r["vs_dense_control"] == pytest.approx(r["top1"] - rows["dense_control"]["top1"])
        assert r["matched_within_5_percent"] == study.matched(r["gflops"], r["target_gflops"])
        assert abs(r["gflops"] - r["target_gflops"]) <= 0.15 * r["target_gflops"]  # 17 tokens: coarse steps
        # an independent score: the same schedule, built here, on every image in one batch
        keep = study.schedule(name, HOST["depth"], r["r"])
        m = STTABT(model.host, model.scout, create_pruner(name, HOST["depth"], keep=keep)).eval()
        with torch.inference_mode():
            out = m.forward_detailed(images, hard=True, executor="pruned")
        assert r["top1"] == pytest.approx(100.0 * float((out.logits.argmax(-1) == labels).float().mean()))
        assert r["gflops"] == pytest.approx(sttabt_flops(m, out.masks).to_dict()["gflops"], rel=1e-6)


def test_tool_refuses_an_unfinished_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        study_cifar.main([str(tmp_path / "nowhere"), "--data", str(tmp_path)])
    assert exit_.value.code == 2
    assert "summary.json not found" in capsys.readouterr().err
