"""The scout's CPU inference kernels (issue 16): fused linear layers, attention a few samples at a
time, concrete key scores made during the scout's pass.

Every fast path must give what the plain path gives: the same plans (hard masks equal), the same
scout outputs.
"""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sttabt.kernels as kernels
import sttabt.pruners.qk as qk
from sttabt.executors import forward_masked
from sttabt.fused_scout import _fused_block
from sttabt.pruners.concrete import concrete_masks, key_scores
from sttabt.pruners.qk import QKAttention, attention_with_maps

from conftest import tiny
from test_scout_speed import padded


@pytest.fixture
def fuse_small(monkeypatch):
    """Fused kernels on tiny inputs too (they normally wait for 1024 rows)."""
    monkeypatch.setattr(kernels, "FUSED_MIN_ROWS", 1)


@pytest.fixture
def small_chunks(monkeypatch):
    """attention_with_maps in chunks of two samples of (3, 11, 11) logits, the last one ragged."""
    monkeypatch.setattr(qk, "MAPS_CHUNK_BYTES", 2 * 3 * 11 * 11 * 4)


# ---------------------------------------------------------------------------------------------
# sttabt.kernels
# ---------------------------------------------------------------------------------------------
def test_fused_linear_layers_are_the_plain_ones(fuse_small):
    g = torch.Generator().manual_seed(0)
    fc = nn.Linear(24, 40)
    x, residual = torch.randn(5, 7, 24, generator=g), torch.randn(5, 7, 40, generator=g)
    with torch.no_grad():
        assert kernels.fusable(x) == kernels.ONEDNN_LINEAR
        torch.testing.assert_close(kernels.linear_gelu(x, fc), F.gelu(fc(x)), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(kernels.linear_add(x, fc, residual), residual + fc(x), rtol=1e-6, atol=1e-6)
        no_bias = nn.Linear(24, 40, bias=False)
        torch.testing.assert_close(kernels.linear_add(x, no_bias, residual), residual + no_bias(x), rtol=1e-6, atol=1e-6)


def test_fusion_only_in_float32_cpu_inference_on_enough_rows():
    x = torch.randn(kernels.FUSED_MIN_ROWS, 8)
    with torch.no_grad():
        assert kernels.fusable(x) == kernels.ONEDNN_LINEAR
        assert not kernels.fusable(x[:-1]), "fewer rows: the plain ops are faster"
        assert not kernels.fusable(x.double())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not kernels.fusable(x)
    assert not kernels.fusable(x), "autograd: the plain ops"


def _blocks():
    from timm.models.vision_transformer import Block

    from sttabt.models.lvvit import LVViTBlock

    torch.manual_seed(3)
    yield Block(24, 3, qkv_bias=True).eval()
    yield Block(24, 3, init_values=0.1).eval()                                 # layer scale: no fused sum
    yield LVViTBlock(24, 3, mlp_ratio=3.0, skip_lam=2.0).eval()                # residual scale
    yield Block(24, 3, act_layer=nn.GELU, drop_path=0.5).eval()                # drop-path, off in eval
    yield Block(24, 3, act_layer=lambda: nn.GELU(approximate="tanh")).eval()   # not the exact GELU


@pytest.mark.parametrize("kind", [None, "probs", "logits"])
def test_scout_block_is_the_timm_block(kind, fuse_small):
    x = torch.randn(3, 9, 24, generator=torch.Generator().manual_seed(1))
    for block in _blocks():
        with torch.no_grad():
            out, q, k, made = _fused_block(block, x, kind)
            torch.testing.assert_close(out, block(x), rtol=1e-5, atol=1e-5)
        assert (made is None) == (kind is None)


# ---------------------------------------------------------------------------------------------
# attention a few samples at a time; the concrete key scores made there
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("padding", [False, True])
def test_maps_in_chunks_are_those_of_the_whole_batch(padding, small_chunks):
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(5, 3, 11, 4, generator=g) for _ in range(3))
    valid = padded(5, tokens=11, seed=3) if padding else None
    mask = None if valid is None else valid[:, None, None, :]
    whole = QKAttention([q], [k], 0.5, "logits", valid)[0]
    with torch.no_grad():
        out, probs = attention_with_maps(q, k, v, 0.5, valid)
        out_l, scores = attention_with_maps(q, k, v, 0.5, valid, "logits")
        assert torch.equal(out, out_l)
        assert (out - F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.5)).abs().max() < 1e-6
        assert (probs - QKAttention([q], [k], 0.5, "probs", valid)[0]).abs().max() < 1e-7
        assert torch.equal(scores, key_scores(whole, valid)), "the recursion's own scores, bit for bit"
    with pytest.raises(ValueError, match="kind"):
        attention_with_maps(q, k, v, 0.5, kind="scores")


def test_scout_scores_only_in_eager_cpu_inference(images):
    model = tiny("sttabt_deit_small", pruner="concrete")
    with torch.no_grad():
        seen = model.scout(images[:3], attention="logits").attention
    assert isinstance(seen, QKAttention) and seen.kind == "logits"
    assert all(s is not None for s in seen.scores[:-1]) and seen.scores[-1] is None, "the last layer: q and k only"
    assert isinstance(model.scout(images[:3], attention="logits").attention, tuple), "autograd: the recorded pass"
    with pytest.raises(ValueError, match="scores"):
        QKAttention(seen.queries, seen.keys, seen.scale, "probs", scores=seen.scores)


P_LOGITS = [-4.0, -2.0, -1.0, 0.0, 2.0]


@pytest.mark.parametrize("name, kwargs", [
    ("sttabt_deit_small", {}),
    ("sttabt_deit_small", {"class_token": True, "reg_tokens": 2}),
    ("sttabt_deit_small", {"class_token": False, "global_pool": "avg"}),
    ("sttabt_lvvit_small", {}),
])
def test_concrete_plans_from_scout_scores_are_those_from_recorded_logits(name, kwargs, images, fuse_small, small_chunks):
    model = tiny(name, pruner="concrete", **kwargs)
    with torch.no_grad():
        seen = model.scout(images, attention="logits").attention
        recorded = forward_masked(model.scout.net, images, record=True, attention="logits", scores_only=True).attention
        for value in P_LOGITS:
            p_logits = torch.full((len(seen),), value) + torch.linspace(-0.5, 0.5, len(seen))
            for budget in ("per_sample", "fixed"):
                plan = concrete_masks(seen, p_logits, hard=True, budget=budget, layout=model.layout)
                assert torch.equal(plan, concrete_masks(recorded, p_logits, hard=True, budget=budget, layout=model.layout))
            soft = concrete_masks(seen, p_logits, hard=False, layout=model.layout)
            assert torch.equal(soft, concrete_masks(recorded, p_logits, hard=False, layout=model.layout))


def test_text_concrete_plans_from_scout_scores_with_padding(small_chunks):
    from test_ltp_models import batch, host_model, ltp_from

    from sttabt.executors import core
    from sttabt.hosts.bert import BertAdapter
    from ltp_nlp.host import embed

    model = ltp_from(host_model("bert"), "bert", prune_mode="sttabt_concrete", p_logit=-1.0)
    scout = model.ltp.scout
    ids, mask = batch("bert", (12, 7, 3, 12, 9))
    valid = mask.bool()
    with torch.no_grad():
        seen = scout.plan_attention(ids, valid, kind="logits")
        x = embed(scout.base.embeddings, ids, None)
        recorded = core.planned_masked(BertAdapter(scout.base.encoder.layer), x, None, valid, record="logits",
                                       scores_only=True).attention
        assert all(s is not None for s in seen.scores[:-1])
        for value in P_LOGITS:
            p_logits = torch.full((len(seen),), value)
            plan = concrete_masks(seen, p_logits, hard=True, valid=valid)
            assert torch.equal(plan, concrete_masks(recorded, p_logits, hard=True, valid=valid))
            assert (plan[:, ~valid] == 0).all()


# ---------------------------------------------------------------------------------------------
# the STTABT forward lets the scout's output go before the host runs
# ---------------------------------------------------------------------------------------------
def test_forward_keeps_no_scout_output(images):
    model = tiny("sttabt_deit_small", pruner="abt", keep=0.5, budget="fixed")
    with torch.no_grad():
        detailed = model.forward_detailed(images)
        lean = model.forward_detailed(images, keep_scout=False)
        assert detailed.scout is not None and lean.scout is None
        assert torch.equal(lean.logits, detailed.logits) and torch.equal(lean.masks, detailed.masks)
        assert torch.equal(model(images), detailed.logits)
