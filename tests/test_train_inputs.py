"""Bad flags and bad data refused before any work: exit 2, one line naming the flag (or the file)
and saying what to do, nothing written."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from test_train import run_dir, train_imagenet, write_config

REFUSED = [
    (["--max-train-images", "-5"], "--max-train-images must be >= 0 (0 means all), got -5"),
    (["--max-val-images", "-1"], "--max-val-images must be >= 0"),
    (["--workers", "-1"], "--workers must be >= 0"),
    (["--save-every", "-2"], "--save-every must be >= 0"),
    (["--batch-size", "0"], "--batch-size must be a positive whole number, got 0"),
    (["--batch-size", "-16"], "--batch-size must be a positive whole number"),
    (["--total-batch-size", "0"], "--total-batch-size must be a positive whole number"),
    (["--total-batch-size", "40"], "--total-batch-size 40 is not a multiple of --batch-size 16"),
    (["--epochs", "-1"], "--epochs must be >= 0"),
    (["--teacher-epochs", "-3"], "--teacher-epochs must be >= 0"),
    (["--approx-epochs", "-1"], "--approx-epochs must be >= 0"),
    (["--factor", "0"], "--factor must be a positive whole number, got 0"),
    (["--img-size", "0"], "--img-size must be a positive whole number"),
    (["--model-kwargs", "depth=0"], "--model-kwargs depth=0: must be a positive number"),
    (["--model-kwargs", "num_heads=-2"], "--model-kwargs num_heads=-2: must be a positive number"),
    (["--model-kwargs", "detph=4"], "--model-kwargs: unknown keys detph; valid keys of sttabt_deit_tiny: "),
    (["--model-kwargs", "img_size=32"], "--model-kwargs img_size: set by --img-size, not here"),
    (["--lr", "nan"], "--lr must be a finite learning rate >= 0, got nan"),
    (["--lr=-1e-5"], "--lr must be a finite learning rate >= 0"),
    (["--min-lr", "-1"], "--min-lr must be a finite learning rate >= 0"),
    (["--teacher-lr", "nan"], "--teacher-lr must be a finite learning rate >= 0"),
    (["--approx-lr", "inf"], "--approx-lr must be a finite learning rate >= 0"),
    (["--weight-decay", "-0.1"], "--weight-decay must be a finite number >= 0"),
    (["--reprob", "1.5"], "--reprob must lie in [0, 1]"),
    (["--model-ema-decay", "nan"], "--model-ema-decay must lie in [0, 1]"),
    (["--device", "tpu"], "--device 'tpu' is not a device; use cpu, cuda or cuda:N"),
    (["--device", "meta"], "--device meta: training runs on cpu or cuda"),
    (["--model-kwargs", "embed_dim=30"], "does not make a model"),  # 30 is not divisible by 2 heads
]


@pytest.mark.parametrize("flags,message", REFUSED, ids=[" ".join(f) for f, _ in REFUSED])
def test_bad_flag_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, flags, message):
    assert train_imagenet.main(["--config", str(write_config(tmp_path)), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert err.count("\n") == 1, "one line"
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused(tmp_path, capsys):
    assert train_imagenet.main(["--config", str(write_config(tmp_path)), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device cuda: no CUDA GPU is available here" in err and "--device cpu" in err, err


def test_unknown_model_kwargs_lists_the_valid_ones(tmp_path, capsys):
    assert train_imagenet.main(["--config", str(write_config(tmp_path)), "--model-kwargs", "depht=2"]) == 2
    err = capsys.readouterr().err
    assert all(k in err for k in ("depth", "embed_dim", "num_heads", "patch_size")), err


def tiny_folder(root, classes, per_class=4):
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (16, 16), (40 * i, 10, 200)).save(root / split / c / f"{i}.png")


def test_single_class_folder_is_refused_naming_it(tmp_path, capsys):
    tiny_folder(tmp_path / "data", ["cat"])
    config = str(write_config(tmp_path, dataset="imagefolder"))
    assert train_imagenet.main(["--config", config, "--data-path", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'data' / 'train'} holds 1 class folder (cat)" in err and "at least 2" in err, err
    assert not run_dir(tmp_path).exists()


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def folder_with_bad_images(tmp_path):
    """2 classes x 16 images per split (one optimiser step of 32 reads every training image);
    train/b/3.png cut short, val/a/1.png not an image at all."""
    root = tmp_path / "data"
    tiny_folder(root, ["a", "b"], per_class=16)
    truncated, foreign = root / "train" / "b" / "3.png", root / "val" / "a" / "1.png"
    Image.effect_noise((16, 16), 60).convert("RGB").save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:200])
    foreign.write_text("not an image\n")
    return root, truncated, foreign


FOLDER_RUN = dict(dataset="imagefolder", max_train_images=0, max_val_images=0, epochs=1, warmup_epochs=0,
                  workers=1)


def test_corrupt_image_stops_the_run_naming_the_file(tmp_path, capsys, one_thread):
    root, truncated, _ = folder_with_bad_images(tmp_path)
    config = str(write_config(tmp_path, **FOLDER_RUN))
    assert train_imagenet.main(["--config", config, "--data-path", str(root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot read image {truncated} (OSError: image file is truncated"), err
    assert "--skip-bad-images" in err and err.count("\n") == 1, err


def test_skip_bad_images_leaves_them_out_and_counts_them(tmp_path, capsys, one_thread):
    root, truncated, foreign = folder_with_bad_images(tmp_path)
    config = str(write_config(tmp_path, **FOLDER_RUN, total_batch_size=16))  # 31 images left: one step
    assert train_imagenet.main(["--config", config, "--data-path", str(root), "--skip-bad-images"]) == 0
    out = capsys.readouterr().out
    assert f"left out 1 unreadable image(s) of {root / 'train'}" in out and str(truncated) in out
    assert f"left out 1 unreadable image(s) of {root / 'val'}" in out and str(foreign) in out
    import json
    for stage in ("teacher", "approx", "concrete/p_logit_0"):
        results = json.loads((run_dir(tmp_path) / stage / "results.json").read_text())
        assert results["skipped_images"] == {"train": 1, "val": 1}, stage
        assert results["fingerprint"]["train_images"] == 31


def test_truncated_teacher_checkpoint_is_named_before_any_work(tmp_path, capsys):
    import timm

    teacher = timm.create_model("deit_tiny_patch16_224", img_size=16, patch_size=4, embed_dim=32, depth=2,
                                num_heads=2, num_classes=10)
    path = tmp_path / "teacher.pth"
    torch.save({"model": teacher.state_dict()}, path)
    path.write_bytes(path.read_bytes()[:1000])
    config = str(write_config(tmp_path))
    assert train_imagenet.main(["--config", config, "--teacher-checkpoint", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path} is truncated or damaged") and "dense teacher checkpoint" in err, err
    assert "weights_only" not in err and not run_dir(tmp_path).exists()
