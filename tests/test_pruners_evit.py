"""EViT-style top-k on the CLS attention: the pure rule on small tensors, then on tiny hosts."""
import pytest
import torch

import sttabt
from sttabt.pruners import PRUNERS, EViTPruner, cls_topk, create_pruner, manual_schedule

from conftest import tiny


def _probs(depth=4, batch=5, tokens=9, heads=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, heads, tokens, tokens, generator=g) * 2).softmax(-1).mean(1) for _ in range(depth)]


def _assert_plan(masks):
    assert masks[:, :, 0].eq(1).all(), "CLS must be in every set"
    assert (masks[1:] <= masks[:-1]).all(), "sets must be nested"
    assert set(masks.unique().tolist()) <= {0.0, 1.0}


def test_hand_computed_example():
    # 5 tokens, 3 layers; only the CLS rows matter
    attn = [torch.zeros(1, 5, 5) for _ in range(3)]
    attn[0][0, 0] = torch.tensor([0.10, 0.05, 0.40, 0.15, 0.30])
    attn[0][0, 1:, 1] = 1.0                                     # other rows are ignored
    attn[1][0, 0] = torch.tensor([0.20, 0.00, 0.10, 0.50, 0.20])  # token 3 is already dropped
    masks = cls_topk(attn, [1.0, 0.6, 0.4])
    assert masks[:, 0].tolist() == [
        [1, 1, 1, 1, 1],  # layer 0 takes in everything
        [1, 0, 1, 0, 1],  # ceil(0.6 * 5) = 3: CLS + the two best of layer 0's CLS row (2, 4)
        [1, 0, 0, 0, 1],  # ceil(0.4 * 5) = 2: CLS + the best *alive* token of layer 1's row (4, not 3)
        [1, 0, 0, 0, 0],  # the last layer outputs CLS only
    ]


def test_counts_nesting_and_cls():
    attn = _probs()
    keep = [1.0, 0.8, 0.5, 0.2]
    masks = cls_topk(attn, keep)
    _assert_plan(masks)
    assert masks.sum(-1).T.tolist() == [[9, 8, 5, 2, 1]] * 5  # ceil(k * 9), the same for every sample
    # a ratio above the previous one cannot grow the set back
    grown = cls_topk(attn, [1.0, 0.3, 0.9, 0.9])
    _assert_plan(grown)
    assert grown.sum(-1)[:, 0].tolist() == [9, 3, 3, 3, 1]


def test_keep_zero_layer_is_unused_and_budgets_agree():
    attn = _probs()
    assert torch.equal(cls_topk(attn, [0.1, 0.5, 0.5, 0.5]), cls_topk(attn, [1.0, 0.5, 0.5, 0.5]))
    assert torch.equal(cls_topk(attn, [1, 0.5, 0.4, 0.3], budget="per_sample"),
                       cls_topk(attn, [1, 0.5, 0.4, 0.3], budget="fixed"))


def test_batched_equals_one_by_one():
    attn = _probs(batch=6)
    keep = [1.0, 0.7, 0.5, 0.3]
    batched = cls_topk(attn, keep)
    for b in range(6):
        assert torch.equal(cls_topk([a[b:b + 1] for a in attn], keep)[:, 0], batched[:, b])


def test_padding_is_never_kept():
    attn = _probs(batch=2)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 5:] = False
    masks = cls_topk(attn, [1.0, 0.8, 0.6, 0.4], budget="per_sample", valid=valid)
    _assert_plan(masks)
    assert masks[:, 1, 5:].eq(0).all()
    assert masks.sum(-1)[:, 1].tolist() == [5, 4, 3, 2, 1]  # ceil(k * 5 real tokens)
    with pytest.raises(ValueError, match="per_sample"):
        cls_topk(attn, [1.0] * 4, budget="fixed", valid=valid)


@pytest.mark.parametrize("keep, message", [([1.0, 0.5], "one keep ratio per layer"), ([1.0, 0.5, 0.0, 0.5], "keep ratio")])
def test_bad_keep(keep, message):
    with pytest.raises(ValueError, match=message):
        EViTPruner(4, keep)


def test_registered_and_schedule():
    assert "evit_scout" in PRUNERS and "CLS attention" in PRUNERS["evit_scout"]
    pruner = create_pruner("evit_scout", 12, keep=0.4)
    assert isinstance(pruner, EViTPruner) and pruner.source == "approx" and pruner.attention == "probs"
    assert pruner.keep == manual_schedule(12, 0.4)
    with pytest.raises(ValueError, match="hard"):
        pruner.plan(_probs(depth=12), hard=False)
    with pytest.raises(ValueError, match="source"):
        EViTPruner(12, 0.4, source="host")


@pytest.mark.parametrize("name", ["sttabt_deit_small", "sttabt_lvvit_small"])
@pytest.mark.parametrize("source", ["approx", "actual"])
@pytest.mark.parametrize("budget", ["per_sample", "fixed"])
@pytest.mark.parametrize("batch", [1, 2, 7])
def test_pruned_equals_masked_hard(name, source, budget, batch, images):
    model = tiny(name, pruner="evit_scout", budget=budget)
    model.pruner = EViTPruner(model.depth, [1.0, 0.6, 0.4], source=source)
    x = images[:batch]
    with torch.no_grad():
        out = model.forward_detailed(x, executor="pruned")
        masked = model(x, hard=True, executor="masked")
    assert (out.logits - masked).abs().max() <= 1e-4
    _assert_plan(out.masks)
    assert out.masks[:-1].mean() < 1, "the plan must actually prune something"
    assert (out.scout is None) == (source == "actual")


def test_plan_reads_the_cls_row_of_the_scout(images):
    model = tiny(pruner="evit_scout", keep=[1.0, 0.5, 0.3])
    with torch.no_grad():
        masks, _ = model.plan(images)
        attention = model.scout(images, attention="probs", scores_only=True).attention
    assert torch.equal(masks, cls_topk(attention, [1.0, 0.5, 0.3]))


def test_nothing_pruned_equals_the_host(images):
    model = sttabt.wrap(tiny().host, pruner="evit_scout", keep=1.0).eval()
    with torch.no_grad():
        assert (model(images) - model.host(images)).abs().max() <= 1e-5
