"""Token pictures: keep maps from plans, dimming, rows and grids, the tool, and TensorBoard during training."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import shared_data, tiny

from sttabt.pruners import PRUNERS, create_pruner
from sttabt.visualize import (CAPTION_HEIGHT, DIM_FACTOR, GAP, MIN_TILE, dim_dropped, kept_share, layer_captions,
                              layer_row, model_keep_maps, normalisation, patch_keep_maps, pruner_grid, to_display)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import visualize as tool  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def random_pixels(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def small_model(**kwargs):
    return tiny("sttabt_deit_tiny", patch_size=8, depth=2, embed_dim=32, num_heads=2, **kwargs)


# --------------------------------------------------------------------------------------------------
# maths
# --------------------------------------------------------------------------------------------------
def test_keep_maps_are_the_plan_without_prefix_tokens():
    gh, gw, layers, batch = 2, 3, 3, 2
    masks = torch.rand(layers + 1, batch, 1 + gh * gw, generator=torch.Generator().manual_seed(0))
    maps = patch_keep_maps(masks, (gh, gw), prefix_tokens=1)
    assert maps.shape == (batch, layers, gh, gw) and maps.dtype == torch.bool
    for b in range(batch):
        for layer in range(layers):  # the last set (the last layer's output) is not a layer input
            for i in range(gh):
                for j in range(gw):
                    assert maps[b, layer, i, j] == (masks[layer, b, 1 + i * gw + j] >= 0.5)
    with pytest.raises(ValueError, match="patch grid"):
        patch_keep_maps(masks, (3, 3))
    with pytest.raises(ValueError, match=r"\(L \+ 1, B, T\)"):
        patch_keep_maps(masks[0], (gh, gw))


def test_dimming_changes_exactly_the_dropped_patches():
    pixels = random_pixels(32, 48)
    keep = torch.rand(4, 6, generator=torch.Generator().manual_seed(2)) > 0.5
    out = dim_dropped(pixels, keep)
    assert out.dtype == np.uint8 and out.shape == pixels.shape
    kept = keep.numpy().repeat(8, 0).repeat(8, 1)
    assert out[kept].tobytes() == pixels[kept].tobytes()       # kept patches: byte-identical
    expected = np.round(pixels[~kept] * (1 - DIM_FACTOR)).astype(np.uint8)
    assert np.array_equal(out[~kept], expected)                  # dropped ones: blended towards black
    assert (out[~kept] < pixels[~kept]).mean() > 0.95
    assert np.array_equal(dim_dropped(Image.fromarray(pixels), keep.numpy()), out)  # PIL in, numpy keep map
    assert np.array_equal(dim_dropped(pixels, torch.ones(4, 6, dtype=torch.bool)), pixels)
    assert kept_share(keep) == pytest.approx(keep.float().mean().item())


@pytest.mark.parametrize("pixels, keep, message", [
    (random_pixels(30, 48), np.ones((4, 6), bool), "patch grid"),
    (random_pixels(32, 48).astype(np.float32), np.ones((4, 6), bool), "uint8"),
    (random_pixels(32, 48), np.ones(24, bool), r"\(gh, gw\)"),
])
def test_dimming_refuses_what_it_cannot_split(pixels, keep, message):
    with pytest.raises(ValueError, match=message):
        dim_dropped(pixels, keep)


def test_display_undoes_the_normalisation_of_timms_eval_transform():
    from timm.data import create_transform

    transform = create_transform(input_size=32, is_training=False, crop_pct=1.0, interpolation="bilinear")
    assert np.allclose(normalisation(transform)[0], MEAN) and np.allclose(normalisation(transform)[1], STD)
    pixels = random_pixels(32, 32)
    shown = to_display(transform(Image.fromarray(pixels)).unsqueeze(0), *normalisation(transform))
    assert shown.shape == (1, 32, 32, 3) and np.array_equal(shown[0], pixels)
    with pytest.raises(ValueError, match="no Normalize"):
        normalisation(lambda x: x)


# --------------------------------------------------------------------------------------------------
# models and pictures
# --------------------------------------------------------------------------------------------------
def test_model_keep_maps_follow_the_models_plan_and_leave_its_mode():
    model = small_model(pruner="abt", keep=0.5).train()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    maps = model_keep_maps(model, images)
    assert model.training and all(m.training for m in model.modules())
    masks, _ = model.eval().plan(images)
    assert torch.equal(maps, patch_keep_maps(masks, (4, 4)))
    # 1 + 16 tokens at keep 0.5: ceil(8.5) = 9 tokens, CLS and 8 of the 16 patches, in every layer
    assert maps.shape == (3, 2, 4, 4) and (maps.sum((-1, -2)) == 8).all()
    manual = model_keep_maps(model, images, create_pruner("manual", 2, keep=0.25))
    assert manual.all()  # the manual schedule keeps everything in its first three layers
    lvvit = tiny("sttabt_lvvit_small", patch_size=8, depth=2, embed_dim=32, num_heads=2, keep=0.5, pruner="abt")
    assert model_keep_maps(lvvit, images).shape == (3, 2, 4, 4)   # token head: still one map per layer


def test_row_has_the_input_and_one_captioned_tile_per_layer():
    pixels = random_pixels(32, 32)
    keep = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(3)) > 0.3
    assert layer_captions(keep[:1]) == [f"layer 1 · {100 * kept_share(keep[0]):.0f} %"]
    row = np.asarray(layer_row(pixels, keep, min_tile=1))          # no upscaling: tiles are the pixels
    assert row.shape == (GAP + 32 + CAPTION_HEIGHT, (3 + 1) * (32 + GAP) + GAP, 3)
    tiles = [row[GAP:GAP + 32, GAP + i * (32 + GAP):GAP + i * (32 + GAP) + 32] for i in range(4)]
    assert np.array_equal(tiles[0], pixels)
    for tile, layer_keep in zip(tiles[1:], keep):
        assert np.array_equal(tile, dim_dropped(pixels, layer_keep))
    scaled = layer_row(pixels, keep)                                 # small inputs are scaled up
    side = 32 * -(-MIN_TILE // 32)
    assert scaled.size == ((3 + 1) * (side + GAP) + GAP, GAP + side + CAPTION_HEIGHT)
    labelled = layer_row(pixels, keep, label="abt")
    assert labelled.height == scaled.height and labelled.width > scaled.width


def test_grid_has_one_labelled_row_per_pruner():
    pixels = random_pixels(32, 32)
    keep = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(4)) > 0.5
    rows = {"concrete (model)": keep, "abt": ~keep, "manual": torch.ones_like(keep)}
    grid = pruner_grid(pixels, rows)
    row = layer_row(pixels, keep, label="concrete (model)")
    assert grid.height == 3 * row.height + GAP and grid.width >= row.width
    with pytest.raises(ValueError, match="no pruners"):
        pruner_grid(pixels, {})


# --------------------------------------------------------------------------------------------------
# tools/visualize.py
# --------------------------------------------------------------------------------------------------
def write_images(folder: Path, sizes=((80, 60), (50, 70))) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, size in enumerate(sizes):
        path = folder / f"picture{i}.png"
        Image.fromarray(random_pixels(size[1], size[0], seed=i)).save(path)
        paths.append(path)
    return paths


TOOL_MODEL = ["--model", "sttabt_deit_tiny", "--img-size", "64"]  # 4 x 4 patches of 16 px, 12 layers
TILE = 128                                                          # 64 px scaled up twice


def test_tool_writes_both_pictures_for_files_and_folders(tmp_path, capsys):
    first, second = write_images(tmp_path / "folder")
    single = write_images(tmp_path / "single", sizes=((64, 64),))[0]
    assert tool.main([*TOOL_MODEL, "--keep", "0.5", str(tmp_path / "folder"), str(single),
                      "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    free = [n for n in PRUNERS if not create_pruner(n, 12).trainable]
    assert f"pruners abt (model), {', '.join(n for n in free if n != 'abt')}" in out
    for image in (first, second, single):
        layers, grid = tmp_path / "out" / f"{image.stem}_layers.png", tmp_path / "out" / f"{image.stem}_pruners.png"
        assert str(layers) in out and str(grid) in out
        with Image.open(layers) as picture:
            assert picture.size == ((12 + 1) * (TILE + GAP) + GAP, GAP + TILE + CAPTION_HEIGHT)
        with Image.open(grid) as picture:
            assert picture.height == len(free) * (GAP + TILE + CAPTION_HEIGHT) + GAP


def test_tool_on_real_images_with_chosen_pruners(tmp_path, capsys):
    folder = shared_data("imagenet-sample")
    assert tool.main([*TOOL_MODEL, "--p-logit", "0", str(folder), "--limit", "2", "--pruners", "concrete", "abt",
                      "--out", str(tmp_path)]) == 0
    assert "pruners concrete (model), abt" in capsys.readouterr().out
    written = sorted(p.name for p in tmp_path.iterdir())
    assert len(written) == 4 and sum(n.endswith("_pruners.png") for n in written) == 2
    with Image.open(next(tmp_path.glob("*_pruners.png"))) as picture:
        assert picture.height == 2 * (GAP + TILE + CAPTION_HEIGHT) + GAP


def test_tool_bad_input(tmp_path):
    image = write_images(tmp_path / "ok", sizes=((32, 32),))[0]
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.png").write_text("not an image")
    out = ["--out", str(tmp_path / "out")]
    cases = [
        ([*TOOL_MODEL, str(tmp_path / "nope.jpg"), *out], "no such image file or folder"),
        ([*TOOL_MODEL, str(tmp_path / "empty"), *out], "no images"),
        (["--model", "sttabt_nope", str(image), *out], "unknown model"),
        ([*TOOL_MODEL, str(image), "--pruners", "abt", "magic", *out],
         "unknown pruner 'magic'; choose from concrete, abt"),
        ([*TOOL_MODEL, "--pruners", "abt", str(image), *out], "put the images first"),
        ([*TOOL_MODEL, *out], "at least one image"),
        ([*TOOL_MODEL, str(tmp_path / "broken.png"), *out], "cannot identify image file"),
        ([*TOOL_MODEL, str(image), "--limit", "0", *out], "--limit"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit, match=message):
            tool.main(argv)
    assert not any((tmp_path / "out").glob("*.png"))


# --------------------------------------------------------------------------------------------------
# TensorBoard during the concrete stage
# --------------------------------------------------------------------------------------------------
def test_pictures_draw_no_random_numbers_and_change_no_weights():
    from sttabt.train.data import load_split
    from sttabt.train.pictures import PICTURED_IMAGES, token_pictures
    from timm.data import create_transform

    val = load_split("digits", None, "val")
    transform = create_transform(input_size=32, is_training=False, crop_pct=1.0, interpolation="bilinear")
    model = small_model().train()
    pictures = token_pictures(val, transform, torch.device("cpu"))
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate(),
              {k: v.clone() for k, v in model.state_dict().items()})
    drawn = pictures(model)
    assert torch.equal(before[0], torch.get_rng_state()) and np.array_equal(before[1], np.random.get_state()[1])
    assert before[2] == random.getstate() and model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before[3].items())
    assert sorted(drawn) == [f"tokens/image_{i}" for i in range(PICTURED_IMAGES)]
    assert all(p.dtype == np.uint8 and p.shape[2] == 3 for p in drawn.values())


def test_concrete_stage_writes_token_pictures_and_the_same_numbers(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from test_train import RESUME_RUN, run_dir, train_imagenet, train_losses, write_config

    from sttabt.train.pictures import PICTURED_IMAGES

    small = dict(max_train_images=64, max_val_images=16, epochs=2, warmup_epochs=0, teacher_epochs=1,
                 approx_epochs=1, **RESUME_RUN)  # every RNG stream in play
    assert train_imagenet.main(["--config", str(write_config(tmp_path, tensorboard=True, **small))]) == 0
    concrete = run_dir(tmp_path) / "concrete" / "p_logit_0"
    events = EventAccumulator(str(concrete / "tb"), size_guidance={"images": 0}).Reload()
    tags = [f"tokens/image_{i}" for i in range(PICTURED_IMAGES)]
    assert set(tags) <= set(events.Tags()["images"])
    assert [e.step for e in events.Images(tags[0])] == [2, 4]          # at each evaluation (2 steps per epoch)
    for stage in ("teacher", "approx"):                                 # the concrete stage only
        assert not EventAccumulator(str(run_dir(tmp_path) / stage / "tb")).Reload().Tags()["images"]

    # the concrete stage again without TensorBoard: the same losses and weights, bit for bit
    losses, weights = train_losses(concrete), torch.load(concrete / "model.pth", weights_only=False)["state_dict"]
    for path in sorted(concrete.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    assert train_imagenet.main(["--config", str(write_config(tmp_path, tensorboard=False, **small)),
                                "--auto-resume"]) == 0
    assert train_losses(concrete) == losses and len(losses) == 4
    again = torch.load(concrete / "model.pth", weights_only=False)["state_dict"]
    assert weights.keys() == again.keys() and all(torch.equal(weights[k], again[k]) for k in weights)
