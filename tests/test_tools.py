"""The command-line tools, called in-process through their ``main(argv)``."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import benchmark  # noqa: E402
import flops  # noqa: E402

from conftest import shared_data  # noqa: E402


def _json(capsys, main, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("model, dense, tol", [
    ("sttabt_deit_small", 4.6, 0.05), ("sttabt_deit_tiny", 1.26, 0.03), ("sttabt_lvvit_small", 6.6, 0.1)])
def test_flops_json_dense_numbers(capsys, model, dense, tol):
    out = _json(capsys, flops.main, ["--model", model, "--keep", "0.5", "--num-images", "1", "--json"])
    assert set(out) >= {"model", "gflops", "dense_gflops", "scout_gflops", "keep_per_layer"}
    assert out["dense_gflops"] == pytest.approx(dense, abs=tol)
    assert out["gflops"] == pytest.approx(out["host_gflops"] + out["scout_gflops"])
    assert out["gflops"] < out["dense_gflops"]
    if model == "sttabt_deit_small":
        assert 0.25 <= out["scout_gflops"] <= 0.4


def test_flops_on_real_images_with_fvcore(capsys):
    folder = shared_data("imagenet-sample")
    out = _json(capsys, flops.main, ["--model", "sttabt_deit_tiny", "--p-logit", "-1", "--data", str(folder),
                                     "--num-images", "4", "--batch-size", "2", "--fvcore", "--json"])
    assert out["images"] == 4 and len(out["keep_per_layer"]) == 12
    assert out["keep_mean"] < 1
    # per-sample budgets pad to the batch maximum, so what runs is at least the per-image cost
    assert out["fvcore_executed_gflops"] >= out["gflops"] * 0.999


@pytest.mark.parametrize("argv, message", [
    (["--model", "sttabt_nope"], "unknown model"),
    (["--keep", "0"], "keep ratio"),
    (["--p-logit", "inf"], "finite"),
    (["--data", "/no/such/folder"], "not found"),
])
def test_flops_bad_input(argv, message):
    with pytest.raises(SystemExit, match=message):
        flops.main(argv)


def test_flops_empty_data_folder(tmp_path):
    with pytest.raises(SystemExit, match="no images"):
        flops.main(["--model", "sttabt_deit_tiny", "--data", str(tmp_path)])


def test_benchmark_reports_side_by_side(capsys):
    out = _json(capsys, benchmark.main, ["--model", "sttabt_deit_tiny", "--img-size", "64", "--keep", "0.5",
                                         "--batch-size", "4", "--warmup", "1", "--repeats", "3", "--json"])
    for key in ("dense_img_s", "pruned_img_s", "speedup", "ideal_speedup", "share_of_ideal"):
        assert out[key] > 0
    assert out["speedup"] == pytest.approx(out["pruned_img_s"] / out["dense_img_s"])
    assert out["ideal_speedup"] == pytest.approx(out["dense_gflops"] / out["gflops"])
    assert len(out["dense_ms"]) == len(out["pruned_ms"]) == 3


def test_benchmark_times_each_model_in_its_own_process(capsys):
    out = _json(capsys, benchmark.main, ["--model", "sttabt_deit_tiny", "--img-size", "32", "--keep", "0.5",
                                         "--batch-size", "2", "--warmup", "0", "--repeats", "2", "--processes", "2",
                                         "--threads", "1", "--json"])
    assert out["isolation"] == "one model per process, 2 rounds"
    assert len(out["dense_ms"]) == len(out["pruned_ms"]) == 2
    assert out["speedup"] == pytest.approx(out["pruned_img_s"] / out["dense_img_s"])
    assert out["share_of_ideal"] == pytest.approx(out["speedup"] / out["ideal_speedup"])
    assert out["ideal_speedup"] == pytest.approx(out["dense_gflops"] / out["gflops"])


def test_tools_rebuild_a_trained_checkpoint_of_its_own_shape(tmp_path, capsys):
    """A training run's model.pth (a custom-shaped host) loads by --checkpoint alone; --keep swaps in a
    top-k pruner on the same host and scout; flags that contradict the checkpoint are refused."""
    import sttabt
    from conftest import tiny

    model = tiny("sttabt_deit_tiny", p_logit=-1.0)
    path = tmp_path / "model.pth"
    sttabt.save_checkpoint(model, path)
    own = _json(capsys, flops.main, ["--checkpoint", str(path), "--num-images", "2", "--json"])
    assert (own["model"], own["pruner"], own["factor"]) == ("sttabt_deit_tiny", "ConcretePruner", 4)
    assert len(own["keep_per_layer"]) == 3
    abt = _json(capsys, flops.main, ["--checkpoint", str(path), "--keep", "0.5", "--num-images", "2", "--json"])
    assert abt["pruner"] == "BacktrackPruner" and abt["dense_gflops"] == own["dense_gflops"]
    with pytest.raises(SystemExit, match="--model sttabt_deit_small but the checkpoint holds sttabt_deit_tiny"):
        flops.main(["--checkpoint", str(path), "--model", "sttabt_deit_small"])
