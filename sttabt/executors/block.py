"""One transformer block under a plan, in the two executions.

``masked_block``: dense shapes, differentiable masks (section 3.4 of DESIGN.md): keys and values times
the input mask ``m_in``; attention probabilities times ``m_in`` over keys, renormalised; queries and
the outputs of the attention projection, fc1 and fc2 times the output mask ``m_out``.

``pruned_block``: the tokens are sorted so that the block's output set is a prefix of its input set;
keys and values come from all ``n_in`` rows, queries and everything after attention from the first
``n_out`` rows only. With 0/1 masks both give the same outputs for the kept tokens.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..capture import capturing
from .rows import RealRows

PROB_EPS = 1e-12  # guards the renormalisation when every key of a row is masked (dropped queries)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matrix products on ``x`` produce: the autocast dtype inside ``torch.autocast`` on
    ``x``'s device (e.g. bfloat16), else ``x``'s own. The reused attention buffer must have it."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, N, H * d) -> (B, H, N, d), a view."""
    b, n, _ = x.shape
    return x.view(b, n, num_heads, -1).transpose(1, 2)


def _split_heads(x: torch.Tensor, parts: int, num_heads: int) -> tuple[torch.Tensor, ...]:
    """(B, N, parts * H * d) -> ``parts`` contiguous (B, H, N, d) tensors, in one copy.

    Batched matrix products on contiguous heads are 2-3x faster on CPU than on strided views.
    """
    b, n, _ = x.shape
    return x.view(b, n, parts, num_heads, -1).permute(2, 0, 3, 1, 4).contiguous().unbind(0)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, d) -> (B, N, H * d)."""
    b, _, n, _ = x.shape
    return x.transpose(1, 2).reshape(b, n, -1)


def _mlp(mlp: nn.Module, x: torch.Tensor, m_out: torch.Tensor | None) -> torch.Tensor:
    x = mlp.fc1(x)
    if m_out is not None:
        x = x * m_out
    x = mlp.act(x)
    x = getattr(mlp, "drop1", nn.Identity())(x)
    x = getattr(mlp, "norm", nn.Identity())(x)
    x = mlp.fc2(x)
    if m_out is not None:
        x = x * m_out
    return getattr(mlp, "drop2", nn.Identity())(x)


def _softmax_keys(logits: torch.Tensor, m_in: torch.Tensor | None, workspace: torch.Tensor | None) -> torch.Tensor:
    """Attention probabilities over keys, times ``m_in`` over keys and renormalised.

    With a ``workspace`` (inference only) the logits already live in it and are overwritten in
    place: no (B, H, T, T) tensor is allocated per layer, which on CPU is most of the cost.
    """
    if workspace is None or capturing():
        probs = logits.softmax(-1)
        if m_in is not None:
            probs = probs * m_in[:, None, None, :]
            probs = probs / probs.sum(-1, keepdim=True).clamp_min(PROB_EPS)
        return probs
    probs = torch.ops.aten._softmax.out(logits, -1, False, out=workspace)
    if m_in is not None:
        probs.mul_(m_in[:, None, None, :])
        probs.div_(probs.sum(-1, keepdim=True).clamp_min_(PROB_EPS))
    return probs


def _scores(q: torch.Tensor, k: torch.Tensor, scale: float, workspace: torch.Tensor | None) -> torch.Tensor:
    if workspace is None or capturing():
        return (q * scale) @ k.transpose(-2, -1)
    # ``out=`` is not autocast: cast to the buffer's dtype, which is what autocast would compute in
    dtype = workspace.dtype
    return torch.matmul((q * scale).to(dtype), k.transpose(-2, -1).to(dtype), out=workspace)


def _recorded(record: str | None, logits: torch.Tensor | None, probs: torch.Tensor | None) -> torch.Tensor | None:
    if record == "logits":
        return logits
    if record == "probs":
        return probs.mean(1)
    return None


def attention_scores(block: nn.Module, x: torch.Tensor, record: str,
                     workspace: torch.Tensor | None = None) -> torch.Tensor:
    """The attention of ``block`` on tokens ``x`` computing q and k only (no values, no output):
    pre-softmax logits (B, H, T, T) or head-averaged probabilities (B, T, T), as ``record`` says."""
    attn = block.attn
    h = block.norm1(x)
    dim = attn.num_heads * attn.head_dim
    qk = F.linear(h, attn.qkv.weight[: 2 * dim], None if attn.qkv.bias is None else attn.qkv.bias[: 2 * dim])
    q, k = _split_heads(qk, 2, attn.num_heads)
    logits = _scores(attn.q_norm(q), attn.k_norm(k), attn.scale, workspace)
    if record == "logits":
        return logits.clone() if workspace is not None else logits  # the workspace is reused
    return _recorded(record, None, _softmax_keys(logits, None, workspace))


def masked_block(
    block: nn.Module,
    x: torch.Tensor,
    m_in: torch.Tensor | None = None,
    m_out: torch.Tensor | None = None,
    *,
    record: str | None = None,
    workspace: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Block on (B, T, D) tokens with (B, T) masks (``None``: keep all).

    Returns the new tokens and, if ``record`` asks, the block's attention: ``"logits"``
    (pre-softmax, B x H x T x T) or ``"probs"`` (the probabilities it used, averaged over heads,
    B x T x T). ``workspace``: a (B, H, T, T) buffer reused for the attention matrix; only without
    autograd (inference), where it saves an allocation per layer.
    """
    attn = block.attn
    h = block.norm1(x)
    q, k, v = _split_heads(attn.qkv(h), 3, attn.num_heads)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if m_in is not None:
        keys = m_in[:, None, :, None]
        k, v = k * keys, v * keys
    if m_out is not None:
        q = q * m_out[:, None, :, None]
    logits = _scores(q, k, attn.scale, workspace)
    kept = logits.clone() if record == "logits" and workspace is not None else logits  # workspace: overwritten next
    probs = _softmax_keys(logits, m_in, workspace)
    seen = _recorded(record, kept, probs)
    out = attn.proj(getattr(attn, "norm", nn.Identity())(_merge(attn.attn_drop(probs) @ v)))
    out = attn.proj_drop(out)
    m_tok = None if m_out is None else m_out.unsqueeze(-1)
    if m_tok is not None:
        out = out * m_tok
    x = x + block.drop_path1(block.ls1(out))
    x = x + block.drop_path2(block.ls2(_mlp(block.mlp, block.norm2(x), m_tok)))
    return x, seen


def pruned_block(
    block: nn.Module,
    x: torch.Tensor,
    n_out: int,
    key_mask: torch.Tensor | None = None,
    rows: RealRows | None = None,
) -> torch.Tensor:
    """Block on (B, n_in, D) sorted tokens; returns the first ``n_out`` tokens' outputs.

    ``key_mask``: optional (B, 1, 1, n_in) bool, False for padding keys (per-sample budgets);
    ``rows``: optional, the real output rows (:class:`~sttabt.executors.rows.RealRows`): the query and
    everything after the attention run on those only, the other rows keep their inputs.
    Uses fused scaled-dot-product attention: no attention matrix is kept.
    """
    attn = block.attn
    n_in = x.shape[1]
    h = block.norm1(x)
    if n_out == n_in and rows is None:
        q, k, v = attn.qkv(h).chunk(3, -1)
    else:
        dim = attn.num_heads * attn.head_dim
        w, b = attn.qkv.weight, attn.qkv.bias
        h_out = h[:, :n_out] if rows is None else rows.take(h[:, :n_out])
        q = F.linear(h_out, w[:dim], None if b is None else b[:dim])
        q = q if rows is None else rows.scatter(q)
        k, v = F.linear(h, w[dim:], None if b is None else b[dim:]).chunk(2, -1)
    q, k, v = (_heads(t, attn.num_heads) for t in (q, k, v))
    q, k = attn.q_norm(q), attn.k_norm(k)
    out = _merge(F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, scale=attn.scale))
    x_out = x[:, :n_out]
    if rows is not None:
        out, x_out = rows.take(out), rows.take(x_out)
    out = attn.proj_drop(attn.proj(getattr(attn, "norm", nn.Identity())(out)))
    y = x_out + block.drop_path1(block.ls1(out))
    y = y + block.drop_path2(block.ls2(_mlp(block.mlp, block.norm2(y), None)))
    return y if rows is None else rows.put(x[:, :n_out], y)
