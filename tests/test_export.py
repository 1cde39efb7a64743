"""The static pruned pass as one graph: torch.compile without graph breaks, torch.export, ONNX."""
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
    "evit_lvvit": lambda: tiny("sttabt_lvvit_small", pruner="evit", keep=[1.0, 0.5, 0.3], budget="static"),
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
