"""Whether a graph capture is tracing the code now: ``torch.compile`` / ``torch.export`` (dynamo),
ONNX export, TorchScript tracing or scripting, ``torch.fx`` symbolic tracing. Under a capture the
library skips Python-side checks, uses no ``out=`` buffers and takes the exporter-friendly form of an
op (:func:`sttabt.pruners.masks.descending_rank`)."""
from __future__ import annotations

import torch
from torch.fx import _symbolic_trace as _fx

_fx_tracing = getattr(_fx, "is_fx_symbolic_tracing", None) or _fx.is_fx_tracing  # the latter warns on newer torch


def capturing() -> bool:
    """True while any graph capture traces the calling code (``torch.compiler``'s tests are looked up
    at each call: they are newer than some supported torch versions)."""
    for name in ("is_compiling", "is_exporting"):
        test = getattr(torch.compiler, name, None)
        if test is not None and test():
            return True
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export() or _fx_tracing()
