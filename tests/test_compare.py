"""tools/compare.py on tiny hosts: the numbers it reports against independent computations."""
import csv
import json
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

import sttabt
from sttabt.data import eval_transform, imagenet_label, labelled_images, load_images
from sttabt.flops import sttabt_flops, vit_flops
from sttabt.pruners import create_pruner
from sttabt.timing import time_alternately

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import compare  # noqa: E402

from conftest import shared_data  # noqa: E402

TINY_HOST = dict(img_size=32, patch_size=8, depth=2, embed_dim=32, num_heads=2)
FAST = ["--repeats", "1", "--warmup", "0", "--no-progress"]


def _checkpoint(folder: Path, **kwargs) -> Path:
    model = timm.create_model("sttabt_deit_tiny", **{**TINY_HOST, **kwargs})
    return Path(sttabt.save_checkpoint(model, folder / "model.pth"))


def _write_images(paths, size=40):
    g = torch.Generator().manual_seed(0)
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        pixels = torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(path)


@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "data"
    _write_images([root / cls / f"{i}.png" for cls in ("cat", "dog", "emu") for i in range(3)])
    return root


def _run(argv):
    assert compare.main(argv) == 0


def test_report_matches_independent_counts(tmp_path, image_folder):
    ckpt = _checkpoint(tmp_path, num_classes=10)
    out = tmp_path / "out"
    keeps, pruners = [0.5, 0.8], ["abt", "abt_oracle", "manual", "evit_scout", "evit"]
    _run(["--model", "sttabt_deit_tiny", "--data", str(image_folder), "--checkpoint", str(ckpt), "--keep", *map(str, keeps),
          "--pruners", *pruners, "--batch-size", "4", "--out", str(out), *FAST])
    for name in ("compare.json", "compare.csv", "compare.png", "compare.svg"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "compare.json").read_text())
    rows = report["rows"]
    assert [(r["pruner"], r["keep"]) for r in rows] == [("dense", 1.0)] + [(p, k) for p in pruners for k in keeps]
    assert report["settings"]["images"] == 9 and report["settings"]["layout"] == "imagefolder"
    with open(out / "compare.csv") as f:
        assert len(list(csv.DictReader(f))) == len(rows)

    model = sttabt.create_from_checkpoint(ckpt).eval()
    data = labelled_images(image_folder)
    assert data.labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    images, labels = load_images(data.files, eval_transform(model)), torch.tensor(data.labels)
    with torch.no_grad():
        dense_top1 = 100.0 * (model.host(images).argmax(-1) == labels).float().mean().item()
        assert rows[0]["top1"] == pytest.approx(dense_top1)
        assert rows[0]["gflops"] == pytest.approx(vit_flops(model.host).gflops)
        for row in rows[1:]:
            variant = sttabt.STTABT(model.host, model.scout, create_pruner(row["pruner"], 2, keep=row["keep"])).eval()
            flops, correct = [], 0
            for chunk, truth in zip(images.split(4), labels.split(4)):  # the tool's batches
                masks, _ = variant.plan(chunk)
                flops += [sttabt_flops(variant, masks).total / 1e9] * chunk.shape[0]
                correct += int((variant(chunk).argmax(-1) == truth).sum())
            assert row["gflops"] == pytest.approx(sum(flops) / len(flops), rel=1e-9)
            assert row["top1"] == pytest.approx(100.0 * correct / 9)
            assert 0 < row["keep_mean"] <= 1 and row["speedup"] > 0
            if row["pruner"] == "abt_oracle":  # the oracle's planning = a dense pass of the host, counted
                dense_pass = vit_flops(model.host, head=False, last_mlp=False, last_attn_scores_only=True).gflops
                assert row["planning_gflops"] == pytest.approx(dense_pass)
                assert row["planning_pass"].startswith("dense host pass")
            else:
                assert row["planning_gflops"] < 0.5 * rows[0]["gflops"]


def test_imagenet_sample(tmp_path):
    folder = shared_data("imagenet-sample")
    ckpt = _checkpoint(tmp_path)  # 1,000 classes
    _run(["--model", "sttabt_deit_tiny", "--data", str(folder), "--checkpoint", str(ckpt), "--limit", "4",
          "--keep", "0.5", "--pruners", "abt", "evit_scout", "--out", str(tmp_path / "out"), *FAST])
    report = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert report["settings"]["layout"] == "imagenet-flat"
    assert [r["images"] for r in report["rows"]] == [4, 4, 4]


def test_imagenet_sample_labels():
    data = labelled_images(shared_data("imagenet-sample"))
    labels = {Path(f).name: label for f, label in zip(data.files, data.labels)}
    assert labels["n01440764_tench.JPEG"] == 0
    assert labels["n01560419_bulbul.JPEG"] == 16
    assert labels["n12998815_agaric.JPEG"] == 992
    assert len(data.classes) == 1000 and data.classes[0] == "n01440764"


def test_flat_names_and_layouts(tmp_path):
    assert imagenet_label("n01440764_tench.JPEG") == 0 and imagenet_label("n15075141_toilet_tissue.JPEG") == 999
    flat = tmp_path / "flat"
    _write_images([flat / "n01443537_goldfish.png", flat / "n01440764_x.png"])
    assert labelled_images(flat).labels == [0, 1]
    _write_images([flat / "holiday.png"])
    with pytest.raises(ValueError, match="<wnid>_<name>"):
        labelled_images(flat)
    _write_images([flat / "a" / "b.png"])
    with pytest.raises(ValueError, match="one layout"):
        labelled_images(flat)


def test_limit_spreads_over_classes(image_folder):
    assert labelled_images(image_folder, limit=3).labels == [0, 1, 2]


@pytest.mark.parametrize("argv, message", [
    (["--data", "/no/such/folder"], "not found"),
    (["--pruners", "abt", "dynamicvit"], "unknown pruner 'dynamicvit': choose from abt, abt_oracle, manual, evit_scout, evit"),
    (["--pruners", "concrete"], "unknown pruner"),
    (["--model", "sttabt_nope"], "unknown model"),
    (["--keep", "0.5", "0"], "keep ratio"),
    (["--keep", "1.5"], "keep ratio"),
    (["--batch-size", "0"], "--batch-size"),
])
def test_bad_input(image_folder, argv, message):
    base = ["--model", "sttabt_deit_tiny", "--data", str(image_folder), *FAST]
    with pytest.raises(SystemExit, match=message):
        compare.main(base + argv)


def test_bad_data(tmp_path, image_folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no images"):
        compare.main(["--model", "sttabt_deit_tiny", "--data", str(tmp_path / "empty"), *FAST])
    ckpt = _checkpoint(tmp_path, num_classes=2)
    with pytest.raises(SystemExit, match="--num-classes 3"):
        compare.main(["--model", "sttabt_deit_tiny", "--data", str(image_folder), "--checkpoint", str(ckpt), *FAST])
    with pytest.raises(SystemExit, match="checkpoint holds sttabt_deit_tiny"):
        compare.main(["--model", "sttabt_deit_small", "--data", str(image_folder), "--checkpoint", str(ckpt), *FAST])


def test_random_weights_warn(tmp_path, image_folder):
    with pytest.warns(UserWarning, match="RANDOM"):
        _run(["--model", "sttabt_deit_tiny", "--img-size", "32", "--num-classes", "3", "--data", str(image_folder),
              "--keep", "0.5", "--pruners", "evit", "--out", str(tmp_path / "out"), *FAST])


def test_time_alternately_interleaves():
    calls = []
    times = time_alternately({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                             device=torch.device("cpu"), warmup=1, repeats=2)
    assert calls == ["a", "b"] * 3 and [len(t) for t in times.values()] == [2, 2]
