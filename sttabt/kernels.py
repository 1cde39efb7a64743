"""Fused linear layers for the scout's CPU inference: ``gelu(x W^T + b)`` and ``x W^T + b + r`` in one kernel.

A scout is ``factor`` times thinner than its host, so its elementwise work (the bias added to every
output, GELU, the residual sum) is ``factor`` times larger relative to its matrix products than the
host's, and on a CPU it costs more than its FLOPs say (DeiT-S's factor-4 scout, batch 32: GELU alone
was 12-15 % of the scout's time). oneDNN applies the bias, the GELU and the residual sum to each tile
of the product while it is still in cache (``torch.ops.mkldnn._linear_pointwise``, the kernel
``torch.compile``'s CPU backend emits for the same pattern). The results are those of
``F.gelu(F.linear(...))`` and ``r + F.linear(...)`` (the tests compare them).

Used only where it pays and is safe (:func:`fusable`): float32 CPU tensors, no autograd, no autocast
(the op is not on autocast's lists), no graph capture (exporters keep the plain ops), and a torch
built with oneDNN. Elsewhere the plain ops run. The host's own layers never use these: its speed is
timm's, the same as the dense model it is compared with.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .capture import capturing


def _has_onednn_linear() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


ONEDNN_LINEAR = _has_onednn_linear()
FUSED_MIN_ROWS = 1024  # fewer rows (tokens in the batch): the plain ops were faster (DeiT-S scout at batch 1, 2 threads)


def fusable(x: torch.Tensor) -> bool:
    """Whether :func:`linear_gelu` and :func:`linear_add` run fused on ``x`` (..., features)."""
    if not ONEDNN_LINEAR or capturing():  # first: under a capture, a test of the shape would guard it
        return False
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu") and x.numel() >= FUSED_MIN_ROWS * x.shape[-1])


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def linear_gelu(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """``F.gelu(linear(x))`` (exact, erf GELU)."""
    if not fusable(x) or type(linear) is not nn.Linear:  # a subclass may compute something else
        return F.gelu(linear(x))
    out = torch.ops.mkldnn._linear_pointwise(_rows(x), linear.weight, linear.bias, "gelu", [], "none")
    return out.view(*x.shape[:-1], -1)


def linear_add(x: torch.Tensor, linear: nn.Linear, residual: torch.Tensor) -> torch.Tensor:
    """``residual + linear(x)``; ``residual`` has the output's shape."""
    if not fusable(x) or type(linear) is not nn.Linear or residual.dtype != x.dtype:
        return residual + linear(x)
    out = torch.ops.mkldnn._linear_pointwise.binary(_rows(x), _rows(residual), linear.weight, linear.bias, "add")
    return out.view(residual.shape)
