"""The static pruned pass as one graph: torch.compile without graph breaks, torch.export, ONNX."""
import json

import pytest
import torch

import sttabt
from sttabt.export import Deployable, export_onnx, export_program, onnx_session, run_onnx

from conftest import tiny


def _calibrated():
    model = tiny(pruner="concrete", budget="static", p_logit=0.5)
    sttabt.calibrate(model, torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(4)))
    return model


MODELS = {
    "abt": lambda: tiny(pruner="abt", keep=0.4, budget="static"),
    "evit_lvvit": lambda: tiny("sttabt_lvvit_small", pruner="evit_scout", keep=[1.0, 0.5, 0.3], budget="static"),
    "concrete": _calibrated,
}


def _fresh(batch, seed=11):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_compile_fullgraph_no_graph_breaks():
    model = MODELS["abt"]()
    x = _fresh(4)
    with torch.no_grad():
        expected = model(x)
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        assert (compiled(x) - expected).abs().max() <= 1e-5


def test_compile_fullgraph_calibrated_concrete():
    model = _calibrated()
    x = _fresh(3)
    with torch.no_grad():
        compiled = torch.compile(Deployable(model), fullgraph=True, backend="eager")
        assert (compiled(x) - model(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("kind", list(MODELS))
def test_torch_export_matches_eager_any_batch(kind):
    model = MODELS[kind]()
    program = export_program(model, _fresh(5, seed=1))
    run = program.module()
    with torch.no_grad():
        for batch in (1, 3, 8):
            x = _fresh(batch)
            assert (run(x) - model(x)).abs().max() <= 1e-4


@pytest.mark.parametrize("kind", ["abt", "concrete"])
def test_onnx_runs_in_onnxruntime_and_matches_eager(kind, tmp_path):
    pytest.importorskip("onnx")
    model = MODELS[kind]()
    session = onnx_session(export_onnx(model, _fresh(5, seed=1), tmp_path / "m.onnx"))
    with torch.no_grad():
        for batch in (1, 6):
            x = _fresh(batch)
            assert (run_onnx(session, x) - model(x)).abs().max() <= 1e-4


def test_deployable_needs_static_counts():
    with pytest.raises(ValueError, match="sttabt.calibrate"):
        Deployable(tiny(pruner="concrete", p_logit=0.5))


# --- the command-line tools ------------------------------------------------------------------------
TOOL_MODEL = ["--model", "sttabt_deit_tiny", "--img-size", "32", "--model-kwargs", "patch_size=4", "depth=3"]


def _tools():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import benchmark
    import export

    return export, benchmark


@pytest.mark.parametrize("fmt, suffix", [("onnx", ".onnx"), ("exported", ".pt2")])
def test_export_tool_writes_a_file_that_matches_eager(fmt, suffix, tmp_path, capsys):
    export, _ = _tools()
    out = tmp_path / f"m{suffix}"
    assert export.main(TOOL_MODEL + ["--keep", "0.5", "--format", fmt, "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert out.is_file() and report["bytes"] == out.stat().st_size
    assert report["max_abs_diff"] <= 1e-4
    assert report["static_counts"] == [33, 33, 33, 1]  # ceil(0.5 * 65), then CLS


def test_export_tool_on_a_calibrated_checkpoint(tmp_path, capsys):
    export, _ = _tools()
    model = tiny("sttabt_deit_tiny", p_logit=0.5)
    path = tmp_path / "model.pth"
    sttabt.save_checkpoint(model, path)
    with pytest.raises(SystemExit, match="sttabt.calibrate"):
        export.main(["--checkpoint", str(path), "--format", "exported", "--out", str(tmp_path / "m.pt2")])
    counts = sttabt.calibrate(model, torch.randn(6, 3, 32, 32))
    sttabt.save_checkpoint(model, path)
    assert export.main(["--checkpoint", str(path), "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
                        "--json"]) == 0
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert report["static_counts"] == list(counts) and report["max_abs_diff"] <= 1e-4


def test_export_tool_refuses_another_budget(tmp_path):
    export, _ = _tools()
    with pytest.raises(SystemExit, match="static budget"):
        export.main(TOOL_MODEL + ["--budget", "fixed", "--format", "onnx", "--out", str(tmp_path / "m.onnx")])


@pytest.mark.parametrize("runtime", ["eager", "compile", "onnxruntime"])
def test_benchmark_runs_in_each_runtime(runtime, capsys):
    _, benchmark = _tools()
    argv = TOOL_MODEL + ["--keep", "0.5", "--batch-size", "2", "--warmup", "0", "--repeats", "1",
                         "--runtime", runtime, "--compile-backend", "eager", "--json"]
    assert benchmark.main(argv) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["runtime"] == runtime and out["dense_img_s"] > 0 and out["pruned_img_s"] > 0
    assert len(out["dense_ms"]) == len(out["pruned_ms"]) == 1
    assert out["budget"] == ("static" if runtime != "eager" else "fixed")
    assert out["gflops"] < out["dense_gflops"]
