"""Issue 11, the tools' side: each tool with --checkpoint runs the checkpoint's own pruner unless a
flag asks otherwise; bad flags exit 2 with one line naming the flag before anything heavy is loaded;
unreadable images are named (or skipped and counted); issue 13: dense timm names in flops/benchmark."""
import json
import sys
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

import sttabt
from conftest import TINY, tiny
from sttabt.data import image_batches, spread
from sttabt.flops import vit_flops

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import _common  # noqa: E402
import benchmark  # noqa: E402
import compare  # noqa: E402
import flops  # noqa: E402
import visualize  # noqa: E402

P_LOGITS = [-2.0, 0.5, 1.5]      # trained, per layer: not what any flag would set
FAST_BENCH = ["--batch-size", "2", "--warmup", "0", "--repeats", "1", "--json"]
FAST_COMPARE = ["--repeats", "1", "--warmup", "0", "--no-progress", "--batch-size", "4"]
SMALL = ["--img-size", "32", "--model-kwargs", "depth=2", "embed_dim=32", "num_heads=2", "patch_size=8"]


def _json(capsys, main, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _write_images(paths, size=36):
    g = torch.Generator().manual_seed(0)
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy()).save(path)
    return paths


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A concrete checkpoint with trained (distinct) p-logits and an abt checkpoint at keep 0.3."""
    folder = tmp_path_factory.mktemp("ckpt")
    concrete = tiny("sttabt_deit_tiny", p_logit=-1.0)
    with torch.no_grad():
        concrete.pruner.p_logits.copy_(torch.tensor(P_LOGITS))
    abt = tiny("sttabt_deit_tiny", pruner="abt", keep=0.3)
    return {"concrete": str(sttabt.save_checkpoint(concrete, folder / "concrete.pth")),
            "abt": str(sttabt.save_checkpoint(abt, folder / "abt.pth"))}


# --------------------------------------------------------------------------------------------------
# --checkpoint: the checkpoint's own pruner
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tool, extra", [(flops, ["--num-images", "2", "--json"]), (benchmark, FAST_BENCH)])
def test_measuring_tools_run_the_checkpoints_own_pruner(capsys, checkpoints, tool, extra):
    own = _json(capsys, tool.main, ["--checkpoint", checkpoints["concrete"], *extra])
    assert own["pruner"] == "ConcretePruner" and own["p_logits"] == pytest.approx(P_LOGITS)
    topk = _json(capsys, tool.main, ["--checkpoint", checkpoints["abt"], *extra])
    assert topk["pruner"] == "BacktrackPruner" and topk["keep_schedule"] == pytest.approx([0.3] * 3)
    # flags ask otherwise: re-target, another keep for the same kind of pruner, another pruner
    retarget = _json(capsys, tool.main, ["--checkpoint", checkpoints["concrete"], "--p-logit", "0.25", *extra])
    assert retarget["pruner"] == "ConcretePruner" and retarget["p_logits"] == pytest.approx([0.25] * 3)
    rekeep = _json(capsys, tool.main, ["--checkpoint", checkpoints["abt"], "--keep", "0.7", *extra])
    assert rekeep["pruner_name"] == "abt" and rekeep["keep_schedule"] == pytest.approx([0.7] * 3)
    other = _json(capsys, tool.main, ["--checkpoint", checkpoints["concrete"], "--pruner", "evit_scout", *extra])
    assert other["pruner"] == "EViTPruner"


def test_build_model_keeps_the_trained_pruner_and_its_weights(checkpoints):
    parser = __import__("argparse").ArgumentParser()
    _common.add_model_args(parser)
    model = _common.build_model(parser.parse_args(["--checkpoint", checkpoints["concrete"]]))
    saved = sttabt.create_from_checkpoint(checkpoints["concrete"])
    assert model.pruner.p_logits.tolist() == pytest.approx(P_LOGITS)
    assert all(torch.equal(v, saved.state_dict()[k]) for k, v in model.state_dict().items())
    # the host's own timm name is the checkpoint's model too
    same = _common.build_model(parser.parse_args(["--checkpoint", checkpoints["abt"], "--model",
                                                  "deit_tiny_patch16_224"]))
    assert same.pruner.keep == pytest.approx([0.3] * 3)


def test_visualize_draws_the_checkpoints_own_pruner(tmp_path, capsys, checkpoints):
    (image,) = _write_images([tmp_path / "a.png"])
    for name, label in (("abt", "abt (model)"), ("concrete", "concrete (model)")):
        assert visualize.main(["--checkpoint", checkpoints[name], str(image), "--pruners", name, "manual",
                               "--out", str(tmp_path / name)]) == 0
        assert f"pruners {label}, manual" in capsys.readouterr().out


def test_compare_gives_the_checkpoints_own_pruner_a_row(tmp_path, checkpoints):
    data = tmp_path / "data"
    _write_images([data / cls / f"{i}.png" for cls in ("a", "b") for i in range(3)])
    out = tmp_path / "out"
    assert compare.main(["--model", "sttabt_deit_tiny", "--data", str(data), "--checkpoint", checkpoints["concrete"],
                         "--keep", "0.5", "--pruners", "checkpoint", "abt", "--out", str(out), *FAST_COMPARE]) == 0
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [(r["pruner"], r["keep"]) for r in rows] == [("dense", 1.0), ("checkpoint (concrete)", None),
                                                        ("abt", 0.5)]
    model = sttabt.create_from_checkpoint(checkpoints["concrete"]).eval()
    images = sttabt.data.load_images(sorted(str(p) for p in data.rglob("*.png")), sttabt.data.eval_transform(model))
    with torch.no_grad():
        kept = [sttabt.flops.sttabt_flops(model, model.plan(chunk)[0]).to_dict()["keep_mean"] * len(chunk)
                for chunk in images.split(4)]
    assert rows[1]["keep_mean"] == pytest.approx(sum(kept) / 6) and rows[1]["budget"] == "per_sample"
    with pytest.raises(SystemExit, match="--pruners checkpoint is the --checkpoint's own pruner"):
        compare.main(["--model", "sttabt_deit_tiny", "--data", str(data), "--pruners", "checkpoint", *FAST_COMPARE])


# --------------------------------------------------------------------------------------------------
# bad flags: exit 2, one line naming the flag, nothing heavy loaded
# --------------------------------------------------------------------------------------------------
BAD_FLAGS = [
    (flops, ["--batch-size", "0"], "--batch-size"),
    (flops, ["--num-images", "-2"], "--num-images"),
    (flops, ["--num-images", "0"], "--num-images"),
    (flops, ["--keep", "1.5"], "--keep"),
    (flops, ["--keep", "0"], "--keep"),
    (flops, ["--factor", "0"], "--factor"),
    (flops, ["--factor", "-4"], "--factor"),
    (flops, ["--img-size", "0"], "--img-size"),
    (flops, ["--p-logit", "nan"], "--p-logit"),
    (flops, ["--pruner", "concrete", "--keep", "0.5"], "--keep"),
    (flops, ["--model", "sttabt_nope"], "--model"),
    (benchmark, ["--batch-size", "-1"], "--batch-size"),
    (benchmark, ["--repeats", "0"], "--repeats"),
    (benchmark, ["--warmup", "-1"], "--warmup"),
    (benchmark, ["--threads", "0"], "--threads"),
    (benchmark, ["--device", "cuda"], "--device"),
    (benchmark, ["--device", "cuda:3"], "--device"),
    (benchmark, ["--device", "nonsense"], "--device"),
    (benchmark, ["--device", "meta"], "--device"),
    (visualize, ["--limit", "-1", "IMAGE", "--out", "OUT"], "--limit"),
    (visualize, ["--factor", "0", "IMAGE", "--out", "OUT"], "--factor"),
    (compare, ["--limit", "-3"], "--limit"),
    (compare, ["--batch-size", "0"], "--batch-size"),
    (compare, ["--repeats", "0"], "--repeats"),
    (compare, ["--warmup", "-1"], "--warmup"),
    (compare, ["--factor", "0"], "--factor"),
    (compare, ["--keep", "0.5", "-0.1"], "--keep"),
    (compare, ["--device", "cuda"], "--device"),
    (compare, ["--model", "sttabt_deit_tinny"], "--model"),
]


@pytest.mark.parametrize("tool, argv, flag", BAD_FLAGS, ids=[f"{t.__name__} {' '.join(a)}" for t, a, _ in BAD_FLAGS])
def test_bad_flags_exit_2_with_one_line_before_building_anything(tmp_path, capsys, monkeypatch, tool, argv, flag):
    (image,) = _write_images([tmp_path / "data" / "c" / "a.png"])
    argv = [str(image) if a == "IMAGE" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    if tool is compare:
        argv = ["--model", "sttabt_deit_tiny", "--data", str(tmp_path / "data"), *argv]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: pytest.fail("a model was built"))
    with pytest.raises(SystemExit) as exit_:
        tool.main(argv)
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_unknown_model_names_close_matches_not_the_registry(capsys):
    with pytest.raises(SystemExit, match="unknown model 'deit_smal_patch16_224'.*close matches: deit_small_patch16_224"):
        flops.main(["--model", "deit_smal_patch16_224"])
    err = capsys.readouterr().err
    assert "vit_huge" not in err and len(err) < 400


def test_negative_counts_are_not_all_but_n(tmp_path):
    files = _write_images([tmp_path / f"{i}.png" for i in range(3)])
    model = tiny("sttabt_deit_tiny")
    for bad in (-1, 0):
        with pytest.raises(ValueError, match="limit must be a whole number >= 1"):
            list(image_batches(tmp_path, model, limit=bad))
        with pytest.raises(ValueError, match="limit"):
            spread(files, bad)
    with pytest.raises(ValueError, match="batch_size"):
        list(image_batches(tmp_path, model, batch_size=0))
    assert sum(len(b) for b in image_batches(tmp_path, model, limit=2)) == 2


# --------------------------------------------------------------------------------------------------
# unreadable images: named, or skipped and counted
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def broken_folder(tmp_path):
    folder = tmp_path / "images"
    _write_images([folder / "c" / "a.png", folder / "c" / "c.png"])
    (folder / "c" / "b.png").write_text("not an image")
    return folder


def test_flops_names_a_bad_image_or_skips_it(capsys, broken_folder, checkpoints):
    base = ["--checkpoint", checkpoints["abt"], "--data", str(broken_folder)]
    with pytest.raises(SystemExit, match=r"b\.png: not a readable image.*--skip-bad-images") as exit_:
        flops.main(base)
    assert exit_.value.code == 2
    capsys.readouterr()
    out = _json(capsys, flops.main, [*base, "--skip-bad-images", "--json"])
    assert out["images"] == 2 and [Path(p).name for p in out["skipped_images"]] == ["b.png"]


def test_compare_names_a_bad_image_or_skips_it(tmp_path, broken_folder, checkpoints):
    base = ["--model", "sttabt_deit_tiny", "--checkpoint", checkpoints["abt"], "--data", str(broken_folder),
            "--keep", "0.5", "--pruners", "abt", "--out", str(tmp_path / "out"), *FAST_COMPARE]
    with pytest.raises(SystemExit, match=r"b\.png: not a readable image"):
        compare.main(base)
    assert not (tmp_path / "out").exists()
    assert compare.main([*base, "--skip-bad-images"]) == 0
    report = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert report["settings"]["images"] == 2 and [r["images"] for r in report["rows"]] == [2, 2]
    assert [Path(p).name for p in report["settings"]["skipped_images"]] == ["b.png"]


def test_visualize_names_a_bad_image_before_drawing_or_skips_it(tmp_path, capsys, broken_folder, checkpoints):
    base = ["--checkpoint", checkpoints["abt"], str(broken_folder), "--pruners", "abt", "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit, match=r"b\.png: not a readable image"):
        visualize.main(base)
    assert not (tmp_path / "out").exists()
    assert visualize.main([*base, "--skip-bad-images"]) == 0
    assert "skipped 1 unreadable file(s)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").glob("*_layers.png")) == ["a_layers.png", "c_layers.png"]


# --------------------------------------------------------------------------------------------------
# issue 13: dense timm names
# --------------------------------------------------------------------------------------------------
def test_flops_takes_a_dense_timm_name_and_wraps_it(capsys):
    """A dense timm name is its sttabt_ model: same FLOPs, same plan (the pruner of the flags)."""
    tiny_flags = [*SMALL, "--keep", "0.5", "--num-images", "2", "--json"]
    dense = _json(capsys, flops.main, ["--model", "deit_tiny_patch16_224", *tiny_flags])
    registered = _json(capsys, flops.main, ["--model", "sttabt_deit_tiny", *tiny_flags])
    assert dense["model"] == "deit_tiny_patch16_224" and dense["pruner"] == "BacktrackPruner"
    host = timm.create_model("deit_tiny_patch16_224", img_size=32, depth=2, embed_dim=32, num_heads=2, patch_size=8)
    assert dense["dense_gflops"] == pytest.approx(vit_flops(host).gflops)
    for key in ("dense_gflops", "gflops", "scout_gflops", "keep_per_layer"):
        assert dense[key] == pytest.approx(registered[key])
    lvvit = _json(capsys, flops.main, ["--model", "lvvit_small", *tiny_flags])
    host = timm.create_model("lvvit_small", img_size=32, depth=2, embed_dim=32, num_heads=2, patch_size=8)
    assert lvvit["dense_gflops"] == pytest.approx(vit_flops(host).gflops) and len(lvvit["keep_per_layer"]) == 2
    concrete = _json(capsys, flops.main, ["--model", "lvvit_small", *SMALL, "--num-images", "2", "--json"])
    assert concrete["pruner"] == "ConcretePruner" and concrete["p_logits"] == [0.0, 0.0]  # the default pruner


def test_benchmark_takes_a_dense_timm_name(capsys):
    out = _json(capsys, benchmark.main, ["--model", "deit_tiny_patch16_224", *SMALL, *FAST_BENCH])
    assert out["model"] == "deit_tiny_patch16_224" and out["pruner"] == "BacktrackPruner"
    assert out["keep"] == 0.5 and out["dense_img_s"] > 0 and out["pruned_img_s"] > 0
    assert out["ideal_speedup"] == pytest.approx(out["dense_gflops"] / out["gflops"])


def test_a_dense_model_the_executors_cannot_run_is_refused(capsys):
    with pytest.raises(SystemExit, match="--model resnet18: sttabt.wrap needs a timm VisionTransformer") as exit_:
        flops.main(["--model", "resnet18", "--model-kwargs", "layers=[1,1,1,1]"])
    assert exit_.value.code == 2


@pytest.mark.parametrize("argv, message", [
    (["--model-kwargs", "depht=2"], "unexpected keyword argument 'depht'"),
    (["--model-kwargs", "depth"], "KEY=VALUE"),
    (["--model-kwargs", "img_size=32"], "use --img-size"),
    (["--model-kwargs", "depth=0"], "depth must be a whole number of blocks >= 1"),
    (["--model-kwargs", "num_heads=2", "embed_dim=32", "depth=1", "--factor", "3"], "factor 3 does not divide"),
])
def test_bad_model_kwargs_exit_2_naming_them(capsys, argv, message):
    with pytest.raises(SystemExit, match=message) as exit_:
        flops.main(["--model", "deit_tiny_patch16_224", "--img-size", "32", *argv])
    assert exit_.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_the_tiny_kwargs_are_the_tests_shape():  # keeps the checkpoints above tiny (3 layers)
    assert TINY["depth"] == len(P_LOGITS)
