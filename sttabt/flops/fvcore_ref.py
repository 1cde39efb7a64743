"""fvcore's count of the executed graph, the cross-check of the analytic counter."""
from __future__ import annotations

import logging
import functools
import math
import warnings
from typing import Any, Callable, Sequence

import torch
from torch import nn


# --------------------------------------------------------------------------------------------------
# fvcore reference
# --------------------------------------------------------------------------------------------------
def _shape(v: Any) -> list[int] | None:
    from fvcore.nn.jit_handles import get_shape

    return get_shape(v)


def _sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> float:
    """aten::scaled_dot_product_attention(q, k, v, attn_mask, ...): scores + weighted sum.

    ``B * H * Lq * Lk * d_qk + B * H * Lq * Lk * d_v``; a mask (boolean or additive) or is_causal does
    not change the count (the dense kernels compute every pair); softmax / scaling are not counted.
    """
    q, k, v = (_shape(x) for x in inputs[:3])
    *batch, lq, d_qk = q
    lk = k[-2]
    d_v = v[-1]
    return math.prod(batch) * lq * lk * (d_qk + d_v)


def _baddbmm_flop_jit(inputs: list[Any], outputs: list[Any]) -> float:
    """aten::baddbmm(self, batch1, batch2, ...): like bmm (the added term is not counted)."""
    n, c, t = _shape(inputs[1])
    d = _shape(inputs[2])[-1]
    return n * c * t * d


def _matmul_flop_jit(inputs: list[Any], outputs: list[Any]) -> float:
    """aten::matmul(a, b[, out]): fvcore's count, also for the ``out=`` form the executors use."""
    from fvcore.nn.jit_handles import matmul_flop_jit

    return matmul_flop_jit(inputs[:2], outputs)


EXTRA_HANDLES: dict[str, Callable[[list[Any], list[Any]], float]] = {
    "aten::scaled_dot_product_attention": _sdpa_flop_jit,
    "aten::baddbmm": _baddbmm_flop_jit,
    "aten::matmul": _matmul_flop_jit,
}


def _captured_modules(fn: Callable[..., Any]) -> list[nn.Module]:
    """nn.Modules a callable holds: bound ``self``, closure cells, ``functools.partial`` arguments."""
    found: list[Any] = []
    seen_fns: set[int] = set()

    def visit_fn(f: Any) -> None:
        if id(f) in seen_fns:
            return
        seen_fns.add(id(f))
        found.append(getattr(f, "__self__", None))
        code, env = getattr(f, "__code__", None), getattr(f, "__globals__", None)
        if code is not None and env is not None:  # module-level names the function reads
            found.extend(env[name] for name in code.co_names if name in env)
        for cell in getattr(f, "__closure__", None) or ():
            try:
                found.append(cell.cell_contents)
            except ValueError:  # empty cell
                continue
        if isinstance(f, functools.partial):
            found.extend(f.args)
            found.extend(f.keywords.values())
            visit_fn(f.func)

    visit_fn(fn)
    modules: list[nn.Module] = []
    for obj in found:
        items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else (obj,)
        for item in items:
            if isinstance(item, nn.Module) and all(item is not m for m in modules):
                modules.append(item)
            elif callable(item) and not isinstance(item, type) and hasattr(item, "__closure__"):
                visit_fn(item)  # a nested helper closure: appends to `found`, visited by this loop
    return modules


class _FnModule(nn.Module):
    """Wrap a plain callable so that fvcore can trace it.

    The modules the callable holds are registered as submodules: the tracer then treats their
    parameters as inputs instead of refusing to bake grad-requiring tensors in as constants.
    """

    def __init__(self, fn: Callable[..., Any], modules: Sequence[nn.Module] = ()) -> None:
        super().__init__()
        self.fn = fn
        held = list(modules) + [m for m in _captured_modules(fn) if all(m is not k for k in modules)]
        self.held = nn.ModuleList(held)

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


def fvcore_flops(
    model_or_fn: nn.Module | Callable[..., Any],
    inputs: Any,
    *,
    sdpa: bool = True,
    modules: Sequence[nn.Module] = (),
) -> float:
    """fvcore FLOPs of ``model_or_fn(*inputs)`` for the WHOLE batch (divide by the batch size yourself).

    ``inputs`` is a tensor or a tuple of positional arguments. A plain callable is wrapped in a module
    that registers the modules it holds (bound ``self``, closure and global names, ``partial`` arguments) plus
    ``modules``, so that their parameters trace as inputs; other grad-requiring tensors it captures make
    the tracer fail (detach them). Traced under ``torch.no_grad()``; call it on an ``eval()`` model
    (fvcore counts train-mode batch norm as a full norm). Registers :data:`EXTRA_HANDLES`
    (``scaled_dot_product_attention``, ``baddbmm``, ``matmul`` with ``out=``) unless ``sdpa=False`` (plain fvcore, which skips
    fused attention). Unsupported-op warnings (elementwise ops, expected) and tracer warnings are
    silenced. ``modules``: extra modules whose parameters the callable uses.
    """
    module = model_or_fn if isinstance(model_or_fn, nn.Module) else _FnModule(model_or_fn, modules)
    if not isinstance(inputs, tuple):
        inputs = (inputs,)
    fv_logger = logging.getLogger("fvcore")
    level = fv_logger.level
    fv_logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer / torch.jit deprecation warnings
            from fvcore.nn import FlopCountAnalysis

            fca = FlopCountAnalysis(module, inputs)
            if sdpa:
                fca.set_op_handle(**EXTRA_HANDLES)
            fca.unsupported_ops_warnings(False)  # elementwise ops (add, gelu, softmax, ...): 0 FLOPs
            fca.uncalled_modules_warnings(False)
            fca.tracer_warnings("none")
            return float(fca.total())
    finally:
        fv_logger.setLevel(level)
