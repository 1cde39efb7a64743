"""Per-sample counts: a pruned layer runs its per-token work on the real output rows only
(sttabt.executors.rows); the results are those of the padded layer, and the FLOPs counted as executed
follow what runs."""
import pytest
import torch

import sttabt.executors.rows as rows_module
from sttabt.executors import core
from sttabt.executors.block import pruned_block
from sttabt.executors.rows import RealRows
from sttabt.flops.analytic import executed_counts

from conftest import tiny


def ragged_rows(batch, n, seed=0):
    counts = torch.randint(1, n + 1, (batch,), generator=torch.Generator().manual_seed(seed))
    counts[0] = n
    return torch.arange(n) < counts[:, None]


def test_real_rows_take_and_put():
    rows = torch.tensor([[True, True, False], [True, False, False]])
    x = torch.arange(12.0).view(2, 3, 2)
    real = RealRows(rows)
    assert torch.equal(real.take(x), x[rows])
    put = real.put(x, -real.take(x))
    assert torch.equal(put[rows], -x[rows]) and torch.equal(put[~rows], x[~rows])
    assert torch.equal(real.scatter(real.take(x))[~rows], torch.zeros(3, 2))
    counted = RealRows(rows.to("meta"), count=3)  # an accelerator's path: the count given, no host sync
    assert counted.index.shape == (3,) and counted.index.device.type == "meta"


@pytest.mark.parametrize("name", ["sttabt_deit_small", "sttabt_lvvit_small"])
def test_packed_block_is_the_padded_block(name):
    block = tiny(name, pruner="abt").host.blocks[1]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 9, 48, generator=g)
    keys = ragged_rows(4, 9, seed=2)
    rows = keys[:, :6] & ragged_rows(4, 6, seed=3)
    with torch.no_grad():
        padded = pruned_block(block, x, 6, keys[:, None, None, :])
        packed = pruned_block(block, x, 6, keys[:, None, None, :], RealRows(rows))
    assert (packed[rows] - padded[rows]).abs().max() < 1e-5
    assert torch.equal(packed[~rows], x[:, :6][~rows]), "padding rows keep their inputs"


@pytest.mark.parametrize("host_type", ["bert", "roberta", "ibert"])
def test_packed_text_layer_is_the_padded_layer(host_type):
    from test_ltp_models import host_model

    from sttabt.hosts.bert import BertAdapter

    host = host_model(host_type)
    adapter = BertAdapter(getattr(host, host.base_model_prefix).encoder.layer)
    layer = adapter.layers[0]
    x = torch.randn(4, 9, host.config.hidden_size, generator=torch.Generator().manual_seed(4))
    keys = ragged_rows(4, 9, seed=5)
    rows = keys[:, :7] & ragged_rows(4, 7, seed=6)
    with torch.no_grad():
        padded = adapter.pruned_layer(layer, x, 7, keys[:, None, None, :])
        packed = adapter.pruned_layer(layer, x, 7, keys[:, None, None, :], RealRows(rows))
    assert (packed[rows] - padded[rows]).abs().max() < 1e-5


@pytest.mark.parametrize("pack_below", [0.0, 1.01])
def test_per_sample_plans_pruned_equal_masked_packed_or_not(pack_below, images, monkeypatch):
    monkeypatch.setattr(rows_module, "PACK_BELOW", pack_below)
    model = tiny("sttabt_deit_small", pruner="concrete", p_logit=-1.0, budget="per_sample")
    with torch.no_grad():
        masks, _ = model.plan(images)
        counts = masks.sum(-1)
        assert (counts.amin(-1) != counts.amax(-1)).any(), "the plan must be ragged"
        pruned = model(images, executor="pruned")
        masked = model(images, executor="masked")
    assert (pruned - masked).abs().max() <= 1e-4


def test_executor_packs_where_padding_is_a_large_share(monkeypatch):
    seen = []

    class Spy:
        layers = [None, None]

        def pruned_layer(self, layer, x, n_out, key_mask, rows=None):
            seen.append(None if rows is None else rows.index.numel())
            return x[:, :n_out]

    plan = torch.zeros(3, 4, 6)
    plan[0, :, :6] = 1                      # layer 0 reads 6 tokens of every sample
    plan[1, 0, :5], plan[1, 1:, :2] = 1, 1  # its outputs: 5, 2, 2, 2 (11 real rows of 20)
    plan[2, :, :2] = 1                      # the last layer's outputs: 2 each, not ragged
    core.planned_pruned(Spy(), torch.randn(4, 6, 8), plan)
    assert seen == [11, None]
    widest, rows = executed_counts(plan.sum(-1))
    assert widest[1].tolist() == [5] * 4 and rows[0].tolist() == [5, 2, 2, 2] and rows[1].tolist() == [2] * 4
    monkeypatch.setattr(rows_module, "PACK_BELOW", 0.5)  # 11 of 20 real rows: not worth it now
    seen.clear()
    core.planned_pruned(Spy(), torch.randn(4, 6, 8), plan)
    assert seen == [None, None]
    assert executed_counts(plan.sum(-1))[1][0].tolist() == [5] * 4


@pytest.mark.parametrize("kind", ["deit", "lvvit", "registers"])
def test_online_pruned_packed_or_not_equals_masked(kind, images, monkeypatch):
    import sttabt
    from test_online_vit import LTP, host

    model = sttabt.wrap(host(kind), **LTP).eval()  # peaked attention: thresholds tell tokens apart
    out = {}
    for pack_below in (0.0, 1.01):
        monkeypatch.setattr(rows_module, "PACK_BELOW", pack_below)
        with torch.no_grad():
            out[pack_below] = model(images, executor="pruned")
            masks = model.forward_detailed(images, executor="pruned").masks
    counts = masks.sum(-1)
    assert (counts.amin(-1) != counts.amax(-1)).any(), "the decisions must be ragged"
    with torch.no_grad():
        masked = model(images, executor="masked")
    assert (out[1.01] - out[0.0]).abs().max() < 1e-5
    assert (out[1.01] - masked).abs().max() <= 1e-4


@pytest.mark.parametrize("host_type", ["bert", "ibert"])
def test_text_ltp_pruned_packed_or_not(host_type, monkeypatch):
    from test_ltp_models import batch, host_model, ltp_from

    model = ltp_from(host_model(host_type), host_type, prune_mode="absolute_threshold", final_token_threshold=0.02)
    ids, mask = batch(host_type, (12, 7, 3, 12, 9))
    out = {}
    for pack_below in (0.0, 1.01):
        monkeypatch.setattr(rows_module, "PACK_BELOW", pack_below)
        with torch.no_grad():
            run = model(ids, mask, masking_mode="hard", executor="pruned")
        out[pack_below] = run.logits
    assert (run.counts[2:4].amin(-1) != run.counts[2:4].amax(-1)).all(), "ragged decisions: packing is exercised"
    with torch.no_grad():
        masked = model(ids, mask, masking_mode="hard", executor="masked").logits
    assert (out[1.01] - out[0.0]).abs().max() < 1e-5
    assert (out[1.01] - masked).abs().max() <= 1e-4
