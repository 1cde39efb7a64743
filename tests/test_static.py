"""Static budgets: counts fixed ahead, so a sample's prediction does not depend on its batch."""
import pytest
import torch

import sttabt
from sttabt.calibrate import nested_counts
from sttabt.executors import forward_masked
from sttabt.pruners.masks import (backward_counts, descending_rank, fill_to_count, forward_counts,
                                  pairwise_descending_rank)

from conftest import tiny

OPTIONS = {  # one ratio per layer for the forward pruners: their LTP schedule would not prune 3 layers
    "abt": dict(keep=0.4),
    "manual": dict(keep=[1.0, 0.6, 0.4]),
    "evit_scout": dict(keep=[1.0, 0.5, 0.3]),
    "concrete": dict(p_logit=0.5),
}


def _calibrated(name="sttabt_deit_small", **kwargs):
    model = tiny(name, pruner="concrete", budget="static", p_logit=0.5, **kwargs)
    calibration = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    sttabt.calibrate(model, calibration.split(4))
    return model


def _model(name, pruner):
    if pruner == "concrete":
        return _calibrated(name)
    return tiny(name, pruner=pruner, budget="static", **OPTIONS[pruner])


@pytest.mark.parametrize("name", ["sttabt_deit_small", "sttabt_lvvit_small"])
@pytest.mark.parametrize("pruner", list(OPTIONS))
def test_sample_alone_equals_sample_in_batch(name, pruner):
    model = _model(name, pruner)
    g = torch.Generator().manual_seed(2)
    sample = torch.randn(1, 3, 32, 32, generator=g)
    with torch.no_grad():
        alone = model(sample)
        for others in (3, 6):
            batch = torch.cat((torch.randn(others // 2, 3, 32, 32, generator=g) * 3, sample,
                               torch.randn(others - others // 2, 3, 32, 32, generator=g)))
            inside = model(batch)[others // 2 : others // 2 + 1]
            assert (alone - inside).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["sttabt_deit_small", "sttabt_lvvit_small"])
@pytest.mark.parametrize("pruner", list(OPTIONS))
def test_static_counts_nested_and_equal_to_masked(name, pruner, images):
    model = _model(name, pruner)
    with torch.no_grad():
        masks, _ = model.plan(images)
        pruned = model(images)
        masked = forward_masked(model.host, images, masks).logits
    assert (pruned - masked).abs().max() <= 1e-4
    expected = torch.tensor(model.static_counts()).float()
    assert (masks.sum(-1) == expected[:, None]).all(), "every sample keeps exactly the stored counts"
    assert (masks[1:] <= masks[:-1]).all(), "O_{l+1} inside O_l"
    assert (expected[1:] <= expected[:-1]).all()
    assert masks[:, :, 0].eq(1).all(), "CLS is always kept"
    assert masks[:-1].mean() < 1, "the plan prunes"


def test_topk_static_counts_are_ceil_keep_times_tokens():
    model = tiny(pruner="abt", keep=[0.9, 0.5, 0.3], budget="static")
    assert model.static_counts() == (59, 33, 20, 1)  # ceil(k_l * 65), CLS only at the end
    assert backward_counts([0.1, 0.5], 10) == (5, 5, 1), "a set holds the next one (union)"
    assert forward_counts([1.0, 0.5, 0.7], 10) == (10, 5, 5, 1), "never more than the previous set"
    manual = tiny(pruner="manual", keep=[1.0, 0.6, 0.4], budget="static")
    assert manual.static_counts() == (65, 39, 26, 1)


def test_topk_static_equals_fixed():
    model = tiny(pruner="abt", keep=0.4)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model.plan(x, budget="static")[0], model.plan(x, budget="fixed")[0])


def test_concrete_fixed_budget_is_batch_dependent_static_is_not():
    """What static budgets fix: the concrete 'fixed' budget takes the batch mean, so one odd image
    changes what every other image keeps."""
    model = _calibrated()
    g = torch.Generator().manual_seed(3)
    sample = torch.randn(1, 3, 32, 32, generator=g)
    changed = False
    with torch.no_grad():
        alone_static = model.plan(sample, budget="static")[0]
        alone_fixed = model.plan(sample, budget="fixed")[0]
        for _ in range(5):
            batch = torch.cat((sample, torch.randn(3, 3, 32, 32, generator=g) * 4))
            assert torch.equal(model.plan(batch, budget="static")[0][:, :1], alone_static)
            changed |= not torch.equal(model.plan(batch, budget="fixed")[0][:, :1], alone_fixed)
    assert changed, "the batch-mean budget should react to the other images"


def test_calibrate_is_deterministic_and_accepts_tensor_loader_iterable():
    images = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    labels = torch.zeros(12, dtype=torch.long)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=4)
    results = []
    for data in (images, loader, list(images.split(4)), images.split(5)):
        torch.manual_seed(0)  # the same weights every time
        model = tiny(pruner="concrete", p_logit=0.5)
        results.append(sttabt.calibrate(model, data))
        assert tuple(model.pruner.calibrated_counts.tolist()) == results[-1]
    assert len(set(results)) == 1, results
    counts = results[0]
    assert counts[-1] == 1 and counts[0] <= 65 and list(counts) == sorted(counts, reverse=True)


def test_calibrated_counts_are_the_mean_per_sample_counts():
    model = tiny(pruner="concrete", p_logit=0.5)
    images = torch.randn(8, 3, 32, 32)
    counts = sttabt.calibrate(model, images)
    with torch.no_grad():
        masks, _ = model.plan(images, budget="per_sample")
    mean = masks.sum(-1).mean(-1)
    mean[-1] = 1
    assert counts[-1] == 1
    for layer in reversed(range(3)):  # rounded mean, at least the next set's count
        assert counts[layer] == max(round(mean[layer].item()), counts[layer + 1])


def test_nested_counts_rounds_and_nests():
    assert nested_counts(torch.tensor([40.2, 41.6, 10.5, 3.0]), 65) == (42, 42, 10, 1)
    assert nested_counts(torch.tensor([70.0, 0.2, 1.0]), 65) == (65, 1, 1)


def test_calibrated_counts_round_trip_through_checkpoints(tmp_path):
    model = _calibrated()
    path = sttabt.save_checkpoint(model, tmp_path / "m.pth")
    loaded = sttabt.create_from_checkpoint(path).eval()
    assert loaded.static_counts() == model.static_counts()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert "pruner.calibrated_counts" in model.state_dict()


def test_checkpoint_without_counts_loads_uncalibrated(tmp_path):
    model = tiny(pruner="concrete", p_logit=0.5)
    path = sttabt.save_checkpoint(model, tmp_path / "m.pth")
    payload = torch.load(path, weights_only=True)
    del payload["state_dict"]["pruner.calibrated_counts"]  # as written before static budgets
    torch.save(payload, path)
    loaded = sttabt.create_from_checkpoint(path, budget="static").eval()
    with pytest.raises(ValueError, match="sttabt.calibrate"):
        loaded(torch.randn(1, 3, 32, 32))
    assert loaded(torch.randn(2, 3, 32, 32), budget="per_sample").shape == (2, 10)


def test_uncalibrated_and_wrong_calibration_errors():
    model = tiny(pruner="concrete", p_logit=0.5, budget="static")
    with pytest.raises(ValueError, match="sttabt.calibrate"):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="non-increasing"):
        model.pruner.set_static_counts([10, 20, 5, 1], 65)
    with pytest.raises(ValueError, match="must be 1"):
        model.pruner.set_static_counts([10, 8, 5, 2], 65)
    with pytest.raises(ValueError, match="no images"):
        sttabt.calibrate(model, [])
    with pytest.raises(ValueError, match="needs no calibration"):
        sttabt.calibrate(tiny(pruner="abt", keep=0.5), torch.randn(2, 3, 32, 32))


def test_calibrate_restores_training_mode():
    model = tiny(pruner="concrete", p_logit=0.5).train()
    sttabt.calibrate(model, torch.randn(2, 3, 32, 32))
    assert model.training


def test_descending_rank_is_a_stable_sort():
    score = torch.tensor([[0.5, 2.0, 0.5, -float("inf"), 2.0, float("inf")]])
    assert descending_rank(score).tolist() == [[3, 1, 4, 5, 2, 0]]
    random = torch.randint(0, 4, (5, 30)).float()
    order = torch.argsort(random, dim=-1, descending=True, stable=True)
    expected = torch.empty_like(order).scatter_(-1, order, torch.arange(30).expand_as(order))
    assert torch.equal(descending_rank(random), expected)
    keep = fill_to_count(random, torch.zeros_like(random, dtype=torch.bool), torch.full((5,), 7))
    assert (keep.sum(-1) == 7).all()


def test_the_exportable_rank_equals_the_sort():
    """Eager ranks by a stable sort, graph captures by pairwise comparison: the same ranks, ties
    (many here), infinities and both signs of zero included."""
    torch.manual_seed(0)
    score = torch.randint(-3, 4, (6, 50)).float()
    score[0, :5] = float("inf")
    score[1, 5:9] = -float("inf")
    score[2, ::2] = -0.0
    assert torch.equal(descending_rank(score), pairwise_descending_rank(score))
    wide = torch.randn(4, 197)
    assert torch.equal(descending_rank(wide), pairwise_descending_rank(wide))
    traced = torch.jit.trace(descending_rank, (wide,))  # a capture takes the pairwise form: no sort node
    assert "sort" not in str(traced.graph) and torch.equal(traced(score), descending_rank(score))


def test_static_model_trains_on_soft_masks():
    """``budget='static'`` is for hard masks; in train mode the soft masks still flow (and get gradients)."""
    model = _calibrated().train()
    out = model.forward_detailed(torch.randn(2, 3, 32, 32))
    assert out.masks.requires_grad and ((out.masks > 0) & (out.masks < 1)).any()
    out.logits.sum().backward()
    assert model.pruner.p_logits.grad is not None
