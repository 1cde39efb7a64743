"""The fast scout (issue 16): fused attention, queries and keys only, row-sparse back-tracking.

The plans must be those of the old path (a recorded dense scout, full attention maps): identical hard
masks, soft masks within 1e-5.
"""
import pytest
import torch

from sttabt.executors import forward_masked
from sttabt.fused_scout import scout_queries_keys
from sttabt.pruners.backtrack import backtrack_topk
from sttabt.pruners.cls_topk import cls_topk
from sttabt.pruners.qk import QKAttention

from conftest import tiny

KEEPS = [0.6, 0.45, 0.3, 0.2]


class CountingQK(QKAttention):
    """Records which attention rows a planner asked for, and whether it made a whole map."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.row_counts, self.full_maps = {}, 0

    def rows(self, layer, index):
        self.row_counts[layer] = index.shape[1]
        return super().rows(layer, index)

    def __getitem__(self, layer):
        self.full_maps += 1
        return super().__getitem__(layer)


def random_qk(batch, tokens=17, heads=3, dim=4, depth=4, kind="probs", valid=None, seed=0, cls=CountingQK):
    g = torch.Generator().manual_seed(seed)
    q = [torch.randn(batch, heads, tokens, dim, generator=g) for _ in range(depth)]
    k = [torch.randn(batch, heads, tokens, dim, generator=g) for _ in range(depth)]
    return cls(q, k, dim ** -0.5, kind, valid)


def maps(qk):
    return [QKAttention.__getitem__(qk, layer) for layer in range(len(qk))]


def padded(batch, tokens=17, seed=0):
    lengths = torch.randint(4, tokens + 1, (batch,), generator=torch.Generator().manual_seed(seed))
    lengths[0] = tokens
    return torch.arange(tokens)[None] < lengths[:, None]


def test_rows_are_the_rows_of_the_full_map():
    qk = random_qk(3, kind="probs")
    index = torch.tensor([[0, 5, 2], [0, 1, 16], [3, 0, 9]])
    full = maps(qk)[1]
    assert torch.allclose(qk.rows(1, index), full.gather(1, index[..., None].expand(-1, -1, full.shape[-1])), atol=1e-7)
    logits = random_qk(1, kind="logits")
    assert torch.allclose(logits.rows(2, index[:1]), maps(logits)[2][:, :, index[0]], atol=1e-6)


@pytest.mark.parametrize("batch", [1, 2, 5])
@pytest.mark.parametrize("budget", ["fixed", "per_sample"])
def test_row_sparse_backtracking_gives_the_same_plan(batch, budget):
    qk = random_qk(batch, seed=batch)
    sparse = backtrack_topk(qk, KEEPS, budget=budget)
    dense = backtrack_topk(maps(qk), KEEPS, budget=budget)
    assert torch.equal(sparse, dense)
    assert qk.full_maps == 0, "back-tracking must not make a whole attention map"


@pytest.mark.parametrize("batch", [1, 3, 6])
def test_row_sparse_backtracking_with_padding_gives_the_same_plan(batch):
    valid = padded(batch, seed=batch)
    qk = random_qk(batch, valid=valid, seed=10 + batch)
    sparse = backtrack_topk(qk, KEEPS, budget="per_sample", valid=valid)
    assert torch.equal(sparse, backtrack_topk(maps(qk), KEEPS, budget="per_sample", valid=valid))
    assert not (sparse.bool() & ~valid).any()


def test_backtracking_computes_only_the_rows_the_next_layer_keeps():
    qk = random_qk(1)
    plan = backtrack_topk(qk, KEEPS, budget="fixed")
    counts = plan.sum(-1)[:, 0].long().tolist()  # |O_l| for l = 0 .. L
    assert qk.row_counts == {layer: counts[layer + 1] for layer in range(len(KEEPS))}
    assert qk.row_counts[len(KEEPS) - 1] == 1, "the last layer reads the CLS row only"


@pytest.mark.parametrize("batch", [1, 4])
def test_cls_topk_reads_only_the_cls_row(batch):
    qk = random_qk(batch, seed=3)
    assert torch.equal(cls_topk(qk, KEEPS), cls_topk(maps(qk), KEEPS))
    assert qk.full_maps == 0 and set(qk.row_counts.values()) == {1}


def old_scout(model, images, kind):
    """The previous planning scout: a recorded dense pass with materialised attention."""
    return forward_masked(model.scout.net, images, record=True, attention=kind, scores_only=True)


@pytest.mark.parametrize("name", ["sttabt_deit_small", "sttabt_lvvit_small"])
def test_fused_scout_gives_the_recorded_scout_attention(name, images):
    model = tiny(name)
    with torch.no_grad():
        assert isinstance(model.scout(images, attention="probs").attention, QKAttention)
        for kind in ("logits", "probs"):
            new, old = scout_queries_keys(model.scout.net, images, kind), old_scout(model, images, kind)
            assert isinstance(new.attention, QKAttention) and len(new.attention) == len(old.attention)
            for a, b in zip(new.attention, old.attention):
                assert a.shape == b.shape and (a - b).abs().max() < 1e-5
            assert len(new.hidden) == len(old.hidden)
            assert all((a - b).abs().max() < 1e-5 for a, b in zip(new.hidden, old.hidden))


@pytest.mark.parametrize("pruner", ["abt", "evit_scout", "manual"])
@pytest.mark.parametrize("budget", ["fixed", "per_sample"])
@pytest.mark.parametrize("batch", [1, 2, 7])
def test_model_plans_are_those_of_the_old_path(pruner, budget, batch, images):
    keep = [1.0, 0.6, 0.4] if pruner == "manual" else 0.4
    model = tiny("sttabt_deit_small", pruner=pruner, keep=keep, budget=budget)
    x = images[:batch]
    with torch.no_grad():
        new, _ = model.plan(x, hard=True)
        old = model.pruner.plan(old_scout(model, x, model.pruner.attention).attention, hard=True, budget=budget)
    assert torch.equal(new, old)


def test_lvvit_abt_plan_is_that_of_the_old_path(images):
    model = tiny("sttabt_lvvit_small", pruner="abt", keep=0.4)
    with torch.no_grad():
        new, _ = model.plan(images[:3], hard=True)
        old = model.pruner.plan(old_scout(model, images[:3], "probs").attention, hard=True, budget="fixed")
    assert torch.equal(new[:-1], old[:-1])  # the token head's last row is the model's own addition


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_concrete_plans_are_those_of_the_old_path(batch, images):
    model = tiny("sttabt_deit_small", pruner="concrete", p_logit=0.5)
    x = images[:batch]
    with torch.no_grad():
        old_attention = old_scout(model, x, "logits").attention
        for hard in (True, False):
            new, _ = model.plan(x, hard=hard)
            old = model.pruner.plan(old_attention, hard=hard)
            if hard:
                assert torch.equal(new, old)
            else:
                assert (new - old).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------
# eager CPU inference: the scout keeps each layer's head-averaged map (attention_with_maps)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("padding", [False, True])
def test_attention_with_maps_is_fused_attention_and_the_qk_maps(batch, padding):
    import torch.nn.functional as F

    from sttabt.pruners.qk import attention_with_maps

    g = torch.Generator().manual_seed(batch)
    q, k, v = (torch.randn(batch, 3, 11, 4, generator=g) for _ in range(3))
    valid = padded(batch, tokens=11, seed=batch) if padding else None
    mask = None if valid is None else valid[:, None, None, :]
    with torch.no_grad():
        out, made = attention_with_maps(q, k, v, 0.5, valid)
        assert (out - F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.5)).abs().max() < 1e-6
        assert (made - QKAttention([q], [k], 0.5, "probs", valid)[0]).abs().max() < 1e-7
    if padding:
        assert (made[~valid[:, None, :].expand_as(made)] == 0).all()


def test_gather_rows_is_gather():
    from sttabt.pruners.qk import gather_rows

    g = torch.Generator().manual_seed(0)
    x, made = torch.randn(3, 2, 9, 5, generator=g), torch.randn(3, 9, 9, generator=g)
    index = torch.randint(0, 9, (3, 4), generator=g)
    for b in (1, 3):
        assert torch.equal(gather_rows(x[:b], index[:b]), x[:b].gather(2, index[:b, None, :, None].expand(b, 2, 4, 5)))
        assert torch.equal(gather_rows(made[:b], index[:b]), made[:b].gather(1, index[:b, :, None].expand(b, 4, 9)))


def test_maps_only_in_eager_cpu_inference(images):
    model = tiny("sttabt_deit_small", pruner="abt", keep=0.4)
    with torch.no_grad():
        seen = model.scout(images[:2], attention="probs").attention
    assert all(m is not None for m in seen.maps[:-1]) and seen.maps[-1] is None, "the last layer: q and k only"
    assert all(m is None for m in model.scout(images[:2], attention="probs").attention.maps), "autograd: no maps"
    with pytest.raises(ValueError, match="maps"):
        QKAttention(seen.queries, seen.keys, seen.scale, "logits", maps=seen.maps)


@pytest.mark.parametrize("budget", ["fixed", "per_sample"])
@pytest.mark.parametrize("batch", [1, 5])
def test_plans_from_kept_maps_are_those_from_queries_and_keys(budget, batch, images):
    model = tiny("sttabt_deit_small", pruner="abt", keep=0.4, budget=budget)
    with torch.no_grad():
        seen = model.scout(images[:batch], attention="probs").attention
        bare = QKAttention(seen.queries, seen.keys, seen.scale, "probs")
        plan = model.pruner.plan(seen, hard=True, budget=budget, layout=model.layout)
        assert torch.equal(plan, model.pruner.plan(bare, hard=True, budget=budget, layout=model.layout))
        for layer in range(len(seen) - 1):
            assert (seen[layer] - bare[layer]).abs().max() < 1e-6


def test_text_planning_keeps_maps_with_padding():
    from test_ltp_models import batch, host_model, ltp_from

    model = ltp_from(host_model("bert"), "bert", prune_mode="sttabt_abt", token_keep_rate=0.4)
    ids, mask = batch("bert", (12, 7, 3))
    with torch.no_grad():
        seen = model.ltp.scout.plan_attention(ids, mask.bool(), kind="probs")
        bare = QKAttention(seen.queries, seen.keys, seen.scale, "probs", seen.valid)
    assert all(m is not None for m in seen.maps[:-1])
    for layer in range(len(seen) - 1):
        assert (seen[layer] - bare[layer]).abs().max() < 1e-6


def test_soft_plan_trains_the_scout_through_fused_attention(images):
    model = tiny("sttabt_deit_small", pruner="concrete").train()
    masks, _ = model.plan(images[:2], hard=False)
    masks[:-1].mean().backward()
    grads = [p.grad for p in model.scout.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_abt_plan_equals_the_masked_pruned_path_on_bigger_inputs():
    model = tiny("sttabt_deit_small", pruner="abt", keep=0.3, budget="fixed", depth=4)
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        pruned = model(x, hard=True, executor="pruned")
        masked = model(x, hard=True, executor="masked")
    assert (pruned - masked).abs().max() <= 1e-4


def _benchmark_tool():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import benchmark

    return benchmark


@pytest.mark.parametrize("pruner", ["abt", "abt_oracle", "concrete"])
def test_benchmark_stages_compose_to_the_pruned_forward(pruner, images):
    options = dict(p_logit=0.5) if pruner == "concrete" else dict(keep=0.4)
    model = tiny("sttabt_deit_small", pruner=pruner, **options)
    with torch.inference_mode():
        runs = _benchmark_tool().stage_runs(model, images)
        seen = runs["scout"]()
        masks = model.pruner.plan(seen.attention, hard=True, budget=model.pruner.default_budget)
        assert torch.equal(masks, runs["plan"]()) and torch.equal(masks, model.plan(images)[0])
        assert torch.equal(runs["host"](), model(images))


def test_benchmark_json_reports_the_stage_medians(capsys):
    import json

    code = _benchmark_tool().main(["--model", "sttabt_deit_tiny", "--img-size", "32", "--keep", "0.5",
                                   "--batch-size", "2", "--warmup", "0", "--repeats", "2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in ("scout_s", "plan_s", "host_s", "dense_s"):
        assert out[key] > 0
    assert out["dense_s"] == pytest.approx(sorted(out["dense_ms"])[0] / 2e3 + sorted(out["dense_ms"])[1] / 2e3)


# ---------------------------------------------------------------------------------------------
# text: the scout stops at the last layer's scores; top-k planners read q and k
# ---------------------------------------------------------------------------------------------
def _old_text_plan(ltp, ids, valid, soft=False):
    """The previous text planning: the scout's (or host's) whole recorded pass, full maps."""
    from ltp_nlp.executors import run_dense
    from ltp_nlp.host import embed, key_bias

    if ltp.config.prune_mode == "sttabt_abt_oracle":
        logits = run_dense(ltp.layers, embed(ltp.embeddings, ids, None), valid, record=True).attention
    else:
        logits = ltp.scout(ids, valid).attention
    if ltp.pruner.attention == "probs":
        logits = [(a + key_bias(valid, a.dtype)).softmax(-1).mean(1) for a in logits]
    return ltp.pruner.plan(logits, hard=not soft, budget="per_sample", valid=valid)


@pytest.mark.parametrize("host_type", ["bert", "roberta"])
@pytest.mark.parametrize("mode", ["sttabt_abt", "sttabt_abt_oracle", "sttabt_concrete"])
@pytest.mark.parametrize("lengths", [(12, 7, 3, 12, 9), (8,), (10, 10)], ids=["ragged5", "one", "equal2"])
def test_text_plans_are_those_of_the_old_path(host_type, mode, lengths):
    from test_ltp_models import batch, host_model, ltp_from

    prune = dict(p_logit=-0.5) if mode == "sttabt_concrete" else dict(token_keep_rate=0.4)
    model = ltp_from(host_model(host_type), host_type, prune_mode=mode, **prune)
    ids, mask = batch(host_type, lengths)
    valid = mask.bool()
    with torch.no_grad():
        new = model.ltp.plan(ids, valid, hard=True)
        assert torch.equal(new, _old_text_plan(model.ltp, ids, valid))
        if mode == "sttabt_concrete":
            soft = model.ltp.plan(ids, valid, hard=False)
            assert (soft - _old_text_plan(model.ltp, ids, valid, soft=True)).abs().max() < 1e-5
    assert (new[:, ~valid] == 0).all() and (new[:, :, 0] == 1).all()


def test_text_planning_pass_reads_queries_keys_and_skips_the_last_ffn():
    from ltp_nlp.approx import planning_attention
    from ltp_nlp.host import embed
    from test_ltp_models import batch, host_model, ltp_from

    model = ltp_from(host_model("roberta"), "roberta", prune_mode="sttabt_abt", token_keep_rate=0.4)
    ids, mask = batch("roberta")
    scout = model.ltp.scout
    last_ffn = scout.base.encoder.layer[-1].intermediate.dense
    calls = []
    handle = last_ffn.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            seen = scout.plan_attention(ids, mask.bool(), kind="probs")
            logits = planning_attention(scout.base.encoder.layer, embed(scout.base.embeddings, ids, None),
                                        mask.bool(), "logits")
            recorded = scout(ids, mask).attention
    finally:
        handle.remove()
    assert len(calls) == 1, "only the full recorded pass runs the last layer's FFN"
    assert isinstance(seen, QKAttention) and len(seen) == len(recorded) == len(logits)
    for a, b in zip(logits, recorded):
        assert (a - b).abs().max() < 1e-5


def _key_scores_reference(logits, valid=None):
    """key_scores as it was before the unpadded fast path (masking by a valid mask of ones)."""
    import math

    keys = torch.ones_like(logits[:, :1, :1, :], dtype=torch.bool) if valid is None else valid[:, None, None, :]
    logits = logits.masked_fill(~keys, 0.0)
    weight = keys.to(logits.dtype)
    n = weight.sum(-1, keepdim=True).clamp_min(1)
    mean = logits.sum(-1, keepdim=True) / n
    variance = (((logits - mean) * weight) ** 2).sum(-1, keepdim=True) / n
    std = variance.clamp_min(torch.finfo(logits.dtype).tiny).sqrt()
    return (0.5 * (1 + torch.erf((logits - mean) / (std + 1e-7) / math.sqrt(2))) * weight).mean(1)


@pytest.mark.parametrize("grad", [False, True])
def test_unpadded_key_scores_are_bitwise_those_of_the_masked_rule(grad):
    from sttabt.pruners.concrete import key_scores

    logits = torch.randn(3, 4, 19, 19, generator=torch.Generator().manual_seed(5)) * 3
    logits[0, 1, 2] = 0.7  # a constant row
    kept = logits.clone()
    with torch.set_grad_enabled(grad):
        fast = key_scores(logits.requires_grad_(grad))
    assert torch.equal(fast.detach(), _key_scores_reference(kept))
    assert torch.equal(logits.detach(), kept), "the logits must not be overwritten"
