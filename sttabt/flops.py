"""Exact FLOPs of (token-pruned) timm Vision Transformers.

Convention (the papers' and fvcore's): **one multiply-add is one FLOP**. Biases, activations
(GELU, ReLU), softmax, residual adds, scaling and layer-scale multiplies, positional-embedding adds
and pooling means are not counted (fvcore leaves these elementwise ops unsupported, i.e. zero).
Counted exactly as fvcore's default handles count them:

* ``Linear``: ``tokens * in_features * out_features``;
* ``Conv``: ``out_h * out_w * out_c * (in_c / groups) * kh * kw`` (bias ignored);
* attention: ``scores + weighted sum = 2 * H * n_queries * n_keys * head_dim`` (fvcore's count of the
  two ``matmul`` of the unfused path; :func:`fvcore_flops` registers the same count for
  ``aten::scaled_dot_product_attention``, which fvcore otherwise silently skips);
* ``LayerNorm`` / ``GroupNorm``: ``5`` FLOPs per element with an affine weight, ``4`` without;
* ``BatchNorm`` (counted in inference mode): ``2`` per element with affine, ``1`` without.

With these, DeiT-S/16 at 224 px reads 4.61 GFLOPs and DeiT-T 1.26 GFLOPs, and the analytic count of
:func:`vit_flops` equals :func:`fvcore_flops` of the same executed graph.

Three bugs of the reference implementation are deliberately avoided:

1. the token count is ``num_patches + num_prefix_tokens`` (197 for a 224 px /16 DeiT), not 192;
2. the patch embedding's input channels (3 for RGB) enter the convolution count;
3. a convolutional stem (LV-ViT: three conv+BN layers before the patch projection) is *added* to the
   projection's FLOPs, not overwritten by it - every conv/norm inside ``model.patch_embed`` is counted.

Token pruning semantics: layer ``l`` reads ``n_in[l]`` tokens (its key/value set, prefix tokens
included) and emits ``n_out[l] <= n_in[l]`` tokens (its query set), with ``n_out[l] == n_in[l + 1]``.
The key/value projections and ``norm1`` run on ``n_in`` tokens; the query projection, attention output
projection, ``norm2`` and the MLP on ``n_out`` tokens; the attention matrix is ``n_out x n_in``.
"""
from __future__ import annotations

import logging
import functools
import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

__all__ = ["FlopsReport", "ModelFlops", "vit_flops", "vit_flops_per_sample", "sttabt_flops", "fvcore_flops"]

GIGA = 1e9
# fvcore's per-element costs of normalisation layers (see fvcore/nn/jit_handles.py).
NORM_FLOPS_AFFINE = 5  # layer/group/instance norm (and training-mode batch norm) with weight
NORM_FLOPS_PLAIN = 4  # same, without an affine weight
BN_EVAL_FLOPS_AFFINE = 2  # inference batch norm: one scale + one shift per element
BN_EVAL_FLOPS_PLAIN = 1
QKV_SPLIT = 3  # a fused qkv projection holds q, k and v rows, in that order
ATTN_MATMULS = 2  # scores (q k^T) and weighted sum (attn v)
CONSISTENCY_TOL = 1e-6  # tolerance when checking n_out[l] == n_in[l + 1] on float (mean) counts


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlopsReport:
    """FLOPs of one forward pass of one image (multiply-add = 1 FLOP), split by stage."""

    embed: float  # patch embedding / convolutional stem (+ norm_pre)
    blocks: tuple[float, ...]  # one entry per transformer layer
    head: float  # final norm + classifier head (+ distillation / aux token-labelling head)
    total: float  # embed + sum(blocks) + head

    @classmethod
    def build(cls, embed: float, blocks: Sequence[float], head: float) -> "FlopsReport":
        blocks = tuple(float(b) for b in blocks)
        return cls(float(embed), blocks, float(head), float(embed) + math.fsum(blocks) + float(head))

    @property
    def gflops(self) -> float:
        return self.total / GIGA

    def to_dict(self) -> dict[str, Any]:
        return {
            "embed": self.embed,
            "blocks": list(self.blocks),
            "head": self.head,
            "total": self.total,
            "gflops": self.gflops,
        }


# --------------------------------------------------------------------------------------------------
# per-module costs
# --------------------------------------------------------------------------------------------------
_BatchNorm = nn.modules.batchnorm._BatchNorm
_ConvNd = nn.modules.conv._ConvNd


def _norm_cost_per_element(m: nn.Module) -> int:
    """FLOPs per normalised element for a norm module (0 for Identity); raises for unknown types."""
    if isinstance(m, nn.Identity):
        return 0
    if isinstance(m, _BatchNorm):  # counted in inference mode, like fvcore on an eval() model
        return BN_EVAL_FLOPS_AFFINE if m.weight is not None else BN_EVAL_FLOPS_PLAIN
    if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
        return NORM_FLOPS_AFFINE if getattr(m, "weight", None) is not None else NORM_FLOPS_PLAIN
    raise NotImplementedError(
        f"FLOPs of norm layer {type(m).__name__} are not defined (fvcore counts layer/group/batch norm only)"
    )


def _per_token_cost(module: nn.Module) -> int:
    """FLOPs per token of a module applied token-wise (an MLP): Linear layers and norms in it."""
    if isinstance(module, nn.Identity):
        return 0
    total = 0
    for m in module.modules():
        if any(True for _ in m.children()):
            continue  # containers: their leaves are visited
        if isinstance(m, nn.Linear):
            total += m.in_features * m.out_features
        elif isinstance(m, nn.LayerNorm):
            total += math.prod(m.normalized_shape) * _norm_cost_per_element(m)
        elif any(True for _ in m.parameters(recurse=False)):
            raise NotImplementedError(f"token-wise FLOPs of {type(m).__name__} are not defined")
    return total


def _linear_cost(m: nn.Module | None) -> int:
    """in * out of a Linear (0 for None / Identity)."""
    if m is None or isinstance(m, nn.Identity):
        return 0
    if not isinstance(m, nn.Linear):
        raise NotImplementedError(f"expected nn.Linear or Identity, got {type(m).__name__}")
    return m.in_features * m.out_features


# --------------------------------------------------------------------------------------------------
# patch embedding (measured once per model and image size by forward hooks)
# --------------------------------------------------------------------------------------------------
_EMBED_CACHE: "weakref.WeakKeyDictionary[nn.Module, tuple[Any, float, int]]" = weakref.WeakKeyDictionary()


def _leaf_hook_cost(m: nn.Module, inp: torch.Tensor, out: torch.Tensor) -> float:
    """FLOPs of one leaf module of the stem for one image, from its input/output shapes."""
    if isinstance(m, _ConvNd):
        if m.transposed:
            raise NotImplementedError("transposed convolutions in the patch embedding are not supported")
        out_c, in_per_group, *kernel = m.weight.shape
        spatial = math.prod(out.shape[2:])
        return spatial * out_c * in_per_group * math.prod(kernel)  # == fvcore: prod(w) * prod(out_hw)
    if isinstance(m, _BatchNorm):
        return inp.numel() * _norm_cost_per_element(m)
    if isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
        return inp.numel() * _norm_cost_per_element(m)
    if isinstance(m, nn.Linear):
        return (inp.numel() // m.in_features) * m.in_features * m.out_features
    if any(True for _ in m.parameters(recurse=False)):
        raise NotImplementedError(f"FLOPs of {type(m).__name__} in the patch embedding are not defined")
    return 0.0  # activations, pooling, dropout, identity: not counted (fvcore convention)


def _model_img_size(model: nn.Module) -> tuple[int, int]:
    pe = model.patch_embed
    size = getattr(pe, "img_size", None)
    if size is None:
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
        size = cfg.get("input_size", (None, None, None))[1:]
        if size[0] is None:
            raise ValueError("cannot infer the model's image size (patch_embed.img_size is None)")
    if isinstance(size, int):
        size = (size, size)
    return int(size[0]), int(size[1])


def _in_chans(pe: nn.Module) -> int:
    for m in pe.modules():
        if isinstance(m, _ConvNd):
            return m.in_channels
        if isinstance(m, nn.Linear):
            return m.in_features
    raise ValueError("patch_embed contains no convolution or linear layer")


def _embed_flops(model: nn.Module) -> tuple[float, int]:
    """(FLOPs of model.patch_embed on one image of the model's img_size, tokens it produces)."""
    pe = model.patch_embed
    img = _model_img_size(model)
    key = (img, id(pe))
    cached = _EMBED_CACHE.get(model)
    if cached is not None and cached[0] == key:
        return cached[1], cached[2]

    param = next(pe.parameters())
    x = torch.zeros(1, _in_chans(pe), *img, device=param.device, dtype=param.dtype)
    total = [0.0]

    def hook(m: nn.Module, args: tuple, out: Any) -> None:
        total[0] += _leaf_hook_cost(m, args[0], out)

    leaves = [m for m in pe.modules() if not any(True for _ in m.children())]
    modes = {m: m.training for m in pe.modules()}
    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        pe.eval()  # no running-stat updates; BN counted in inference mode
        with torch.no_grad():
            out = pe(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    n_patches = getattr(pe, "num_patches", None)
    if n_patches is None:  # (B, N, C) tokens or a (B, H, W, C) / (B, C, H, W) map
        n_patches = out.shape[1] if out.dim() == 3 else math.prod(out.shape[1:3])
    _EMBED_CACHE[model] = (key, total[0], int(n_patches))
    return total[0], int(n_patches)


# --------------------------------------------------------------------------------------------------
# analytic model: per-layer coefficients of n_in, n_out and n_in * n_out
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _LayerCoef:
    per_in: float  # FLOPs per key/value token
    per_out: float  # FLOPs per query (= output) token
    per_pair: float  # FLOPs per (query, key) pair


def _block_coef(blk: nn.Module, *, mlp: bool, scores_only: bool) -> _LayerCoef:
    from timm.models.vision_transformer import ResPostBlock  # post-norm: norm1 acts on outputs

    if isinstance(blk, ResPostBlock):
        raise NotImplementedError("post-norm blocks (ResPostBlock) are not supported")
    attn = blk.attn
    qkv = getattr(attn, "qkv", None)
    if not isinstance(qkv, nn.Linear):
        raise NotImplementedError(f"attention {type(attn).__name__} without a fused qkv Linear")
    dim = qkv.in_features
    attn_dim = qkv.out_features // QKV_SPLIT
    heads = attn.num_heads
    head_dim = getattr(attn, "head_dim", attn_dim // heads)
    if heads * head_dim != attn_dim:
        raise ValueError(f"num_heads * head_dim = {heads * head_dim} != qkv width / 3 = {attn_dim}")

    proj_one = dim * attn_dim  # one of q / k / v for one token
    per_in = _norm_cost_per_element(blk.norm1) * dim
    per_in += proj_one * (1 if scores_only else 2)  # k (+ v)
    per_in += _norm_cost_per_element(getattr(attn, "k_norm", nn.Identity())) * attn_dim
    per_out = proj_one  # q
    per_out += _norm_cost_per_element(getattr(attn, "q_norm", nn.Identity())) * attn_dim
    per_pair = heads * head_dim * (1 if scores_only else ATTN_MATMULS)
    if not scores_only:
        per_out += _linear_cost(getattr(attn, "gate", None))  # optional gated attention (query side)
        per_out += _norm_cost_per_element(getattr(attn, "norm", nn.Identity())) * attn_dim
        per_out += _linear_cost(attn.proj)
        if mlp:
            per_out += _norm_cost_per_element(blk.norm2) * dim
            per_out += _per_token_cost(blk.mlp)
    return _LayerCoef(float(per_in), float(per_out), float(per_pair))


def _head_coef(model: nn.Module) -> tuple[float, float, float]:
    """(FLOPs per token leaving the last layer, FLOPs per non-prefix such token, constant)."""
    if getattr(model, "attn_pool", None) is not None:
        raise NotImplementedError("attention-pooling (MAP) heads are not supported")
    dim = model.embed_dim
    per_token = _norm_cost_per_element(model.norm) * dim
    const = _norm_cost_per_element(getattr(model, "fc_norm", nn.Identity())) * dim
    const += _linear_cost(model.head)  # on the pooled (CLS) vector
    const += _linear_cost(getattr(model, "head_dist", None))  # DeiT distillation token head
    aux = getattr(model, "aux_head", None)
    per_patch = float(_linear_cost(aux))  # LV-ViT token labelling: every non-prefix token
    return float(per_token), per_patch, float(const)


def _evaluate(
    model: nn.Module,
    counts: torch.Tensor,
    *,
    head: bool,
    last_mlp: bool,
    last_attn_scores_only: bool,
) -> FlopsReport:
    """Batch-mean report for float64 counts of shape (L + 1, B)."""
    blocks = list(model.blocks)
    depth = len(blocks)
    if counts.dim() != 2 or counts.shape[0] != depth + 1:
        raise ValueError(f"counts must have shape (L + 1, B) = ({depth + 1}, B), got {tuple(counts.shape)}")
    if head and last_attn_scores_only:
        raise ValueError("last_attn_scores_only=True leaves no tokens for a head; pass head=False")
    n_in, n_out = counts[:-1], counts[1:]
    if bool((counts <= 0).any()):
        raise ValueError("token counts must be positive")
    if bool((n_out > n_in + CONSISTENCY_TOL * n_in).any()):
        raise ValueError("a layer cannot output more tokens than it reads (n_out[l] <= n_in[l])")

    embed, _ = _embed_flops(model)
    norm_pre = getattr(model, "norm_pre", nn.Identity())  # before the blocks, on the dense sequence
    embed += _norm_cost_per_element(norm_pre) * model.embed_dim * _dense_tokens(model)

    per_layer = []
    for i, blk in enumerate(blocks):
        last = i == depth - 1
        c = _block_coef(blk, mlp=last_mlp or not last, scores_only=last and last_attn_scores_only)
        f = c.per_in * n_in[i] + c.per_out * n_out[i] + c.per_pair * n_in[i] * n_out[i]
        per_layer.append(f.mean().item())

    head_flops = 0.0
    if head:
        per_token, per_patch, const = _head_coef(model)
        leaving = counts[-1]
        patches = (leaving - model.num_prefix_tokens).clamp(min=0)
        head_flops = (per_token * leaving + per_patch * patches).mean().item() + const
    return FlopsReport.build(embed, per_layer, head_flops)


def _dense_tokens(model: nn.Module) -> int:
    """Tokens every layer sees without pruning: patches + prefix (class / distillation / register)."""
    _, n_patches = _embed_flops(model)
    return n_patches + int(getattr(model, "num_prefix_tokens", 1))


def _resolve_counts(
    model: nn.Module, n_in: Sequence[float] | None, n_out: Sequence[float] | None
) -> list[float]:
    """The (L + 1) token counts: n_in of every layer, then the tokens leaving the last one."""
    depth = len(model.blocks)
    if n_in is None and n_out is None:
        return [float(_dense_tokens(model))] * (depth + 1)
    if n_in is not None:
        n_in = [float(v) for v in n_in]
        if len(n_in) != depth:
            raise ValueError(f"n_in must have one entry per layer ({depth}), got {len(n_in)}")
    if n_out is not None:
        n_out = [float(v) for v in n_out]
        if len(n_out) != depth:
            raise ValueError(f"n_out must have one entry per layer ({depth}), got {len(n_out)}")
    if n_in is None:  # the first layer reads the dense sequence
        n_in = [float(_dense_tokens(model))] + n_out[:-1]
    if n_out is None:  # the last layer keeps what it reads
        n_out = n_in[1:] + [n_in[-1]]
    for i in range(depth - 1):
        if abs(n_out[i] - n_in[i + 1]) > CONSISTENCY_TOL * max(1.0, abs(n_in[i + 1])):
            raise ValueError(f"n_out[{i}] = {n_out[i]} != n_in[{i + 1}] = {n_in[i + 1]}")
    return n_in + [n_out[-1]]


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------
def vit_flops(
    model: nn.Module,
    n_in: Sequence[float] | None = None,
    n_out: Sequence[float] | None = None,
    *,
    head: bool = True,
    last_mlp: bool = True,
    last_attn_scores_only: bool = False,
) -> FlopsReport:
    """FLOPs of one image through a timm ``VisionTransformer`` whose layers see the given token counts.

    Args:
        model: a timm ``VisionTransformer`` (DeiT / ViT with class token, LV-ViT subclass, ...).
        n_in: tokens read by each layer (key/value set, prefix included); default dense
            (``num_patches + num_prefix_tokens``); if only ``n_out`` is given, ``n_in[0]`` is dense.
        n_out: tokens each layer outputs (its query set, ``n_out[l] == n_in[l + 1]``); if only ``n_in``
            is given the last layer keeps its tokens. Floats (batch means) are accepted; the attention
            term then uses ``mean(n_in) * mean(n_out)`` - use :func:`vit_flops_per_sample` to be exact.
        head: count the final norm (on the tokens leaving the last layer) + classifier (+ aux) head.
        last_mlp: count ``norm2`` + MLP of the last layer (False for a network read only for attention).
        last_attn_scores_only: the last layer computes only q, k and the attention scores (no v, no
            weighted sum, no output projection, no MLP): the thin approximation network. Needs head=False.
    """
    counts = torch.tensor(_resolve_counts(model, n_in, n_out), dtype=torch.float64).unsqueeze(1)
    return _evaluate(model, counts, head=head, last_mlp=last_mlp, last_attn_scores_only=last_attn_scores_only)


def vit_flops_per_sample(
    model: nn.Module,
    counts: torch.Tensor,
    *,
    head: bool = True,
    last_mlp: bool = True,
    last_attn_scores_only: bool = False,
) -> FlopsReport:
    """Batch-mean FLOPs per image, computed exactly per sample (vectorised over the batch).

    ``counts`` is a (L + 1, B) integer tensor: ``counts[l, b]`` tokens enter layer ``l`` for sample ``b``
    and ``counts[L, b]`` tokens leave the last layer. Switches as in :func:`vit_flops`.
    """
    counts = torch.as_tensor(counts).detach().to(device="cpu", dtype=torch.float64)
    return _evaluate(model, counts, head=head, last_mlp=last_mlp, last_attn_scores_only=last_attn_scores_only)


@dataclass(frozen=True)
class ModelFlops:
    """FLOPs per image of an STTABT model on a batch: pruned host + the pass its pruner reads."""

    host: FlopsReport           # the host under the plan (per-sample exact, batch mean)
    scout: FlopsReport          # the scout (or, for the oracle, the host's dense attention pass)
    dense: FlopsReport          # the dense host
    keep_per_layer: tuple[float, ...]  # mean share of tokens each layer takes in

    @property
    def total(self) -> float:
        return self.host.total + self.scout.total

    def to_dict(self) -> dict[str, Any]:
        return {
            "gflops": self.total / GIGA, "dense_gflops": self.dense.gflops,
            "host_gflops": self.host.gflops, "scout_gflops": self.scout.gflops,
            "keep_per_layer": list(self.keep_per_layer),
            "keep_mean": sum(self.keep_per_layer) / len(self.keep_per_layer),
        }


def sttabt_flops(model: nn.Module, masks: torch.Tensor, *, executed: bool = False) -> ModelFlops:
    """FLOPs of an ``sttabt.STTABT`` model that ran on a batch with the hard plan ``masks``.

    By default each image is counted with its own token counts (the method's cost). With
    ``executed=True`` every image is counted at the batch maximum per layer, which is what the pruned
    executor computes when counts differ across the batch (``budget="per_sample"`` pads).

    The scout runs dense and stops at the last layer's attention scores; the oracle pruner reads the
    host's own attention from the same kind of pass; the online pruners (``ltp``, ``evit``) need no
    planning pass (scout FLOPs 0). Planning itself (a few ``T x T``
    matrix-vector products per layer) is left out: under 0.1 % of the total.
    """
    from .pruners.masks import counts as plan_counts

    counts = plan_counts(masks)
    if executed:
        counts = counts.amax(-1, keepdim=True).expand_as(counts)
    if getattr(model.pruner, "online", False):  # decides from the host's own pass: no planning pass
        scout = FlopsReport.build(0.0, [0.0] * len(model.host.blocks), 0.0)
    else:
        reader = model.scout.net if model.pruner.source == "approx" else model.host
        scout = vit_flops(reader, head=False, last_mlp=False, last_attn_scores_only=True)
    tokens = _dense_tokens(model.host)
    keep = model.layout.ratio(counts[:-1].double().mean(-1), tokens).tolist()  # prefix tokens are not patches
    return ModelFlops(vit_flops_per_sample(model.host, counts), scout, vit_flops(model.host), tuple(keep))


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
