"""Deployment: an STTABT model under its static budget as one graph (torch.compile, torch.export, ONNX).

Under ``budget="static"`` every shape of the pruned pass is known ahead (the counts are ints, the
token ranks come from comparisons, not a stable sort), so nothing is read back from the device and
the whole forward is one graph: ``torch.compile(model, fullgraph=True)`` has no graph breaks,
``torch.export`` and ONNX export work with a dynamic batch size (the image size is static: the token
counts depend on it).

:class:`Deployable` pins the choices a served model must not leave to its caller (hard masks, the
pruned executor, the static budget) behind a plain ``forward(images)``, the signature exporters want.
"""
from __future__ import annotations

import os
import warnings

import torch
from torch import nn

ONNX_OPSET = 18
MAX_BATCH = 4096  # upper bound of the exported dynamic batch dimension


class Deployable(nn.Module):
    """``forward(images) -> logits`` of an STTABT model: hard masks, tokens removed, static budget."""

    def __init__(self, model: nn.Module):
        super().__init__()
        model.static_counts()  # fails now, with what to do, if the model has no static counts yet
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, hard=True, executor="pruned", budget="static")


def _deployable(model: nn.Module) -> nn.Module:
    """An STTABT model as a :class:`Deployable`; any other module (a dense host, ...) as it is."""
    from .wrap import STTABT

    return (Deployable(model) if isinstance(model, STTABT) else model).eval()


def export_program(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of the static pruned pass (of an STTABT model, or of any module taking images),
    batch size dynamic (1 .. MAX_BATCH)."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        return torch.export.export(_deployable(model), (example,), dynamic_shapes=({0: batch},))


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> str:
    """ONNX file of the static pruned pass (input ``images``, output ``logits``, batch size dynamic).

    Uses the TorchScript-based exporter (``dynamo=False``), which needs only the ``onnx`` package. Its
    warnings that shapes are traced as constants are expected (they are static) and silenced."""
    path = os.fspath(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(_deployable(model), (example,), path, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=ONNX_OPSET, dynamo=False)
    return path


def onnx_session(path: str | os.PathLike):
    """An onnxruntime CPU session for ``path`` (needs the ``export`` extra: ``pip install sttabt[export]``)."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError("running ONNX models needs onnxruntime: pip install 'sttabt[export]'") from err
    return onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])


def run_onnx(session, images: torch.Tensor) -> torch.Tensor:
    """Logits of an onnxruntime ``session`` from :func:`export_onnx` on ``images``."""
    return torch.from_numpy(session.run(["logits"], {"images": images.detach().cpu().float().numpy()})[0])
