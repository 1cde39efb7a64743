"""The core property: really removing tokens gives what the masked (training) semantics give."""
import pytest
import timm
import torch

import sttabt
from sttabt.executors import forward_masked, forward_pruned

from conftest import TINY, tiny

PRUNERS = ["concrete", "abt", "abt_oracle", "manual"]


@pytest.mark.parametrize("name", ["sttabt_deit_small", "sttabt_lvvit_small"])
@pytest.mark.parametrize("pruner", PRUNERS)
@pytest.mark.parametrize("budget", ["per_sample", "fixed"])
@pytest.mark.parametrize("batch", [1, 2, 7])
def test_pruned_equals_masked_hard(name, pruner, budget, batch, images):
    if pruner == "concrete":
        options = dict(p_logit=0.5)
    else:  # the LTP schedule of 'manual' would not prune 3 layers: give it one ratio per layer
        options = dict(keep=[1.0, 0.6, 0.4] if pruner == "manual" else 0.4)
    model = tiny(name, pruner=pruner, budget=budget, **options)
    x = images[:batch]
    with torch.no_grad():
        masks, _ = model.plan(x, hard=True)
        pruned = model(x, hard=True, executor="pruned")
        masked = model(x, hard=True, executor="masked")
    assert (pruned - masked).abs().max() <= 1e-4
    assert masks[:, :, 0].eq(1).all(), "CLS is never dropped"
    assert (masks[1:] <= masks[:-1]).all(), "masks are nested"
    assert masks[:-1].mean() < 1, "the plan must actually prune something"
    if budget == "fixed":
        counts = masks.sum(-1)
        assert (counts == counts[:, :1]).all()


def test_nothing_pruned_equals_plain_timm(images):
    host = timm.create_model("deit_small_patch16_224", **TINY).eval()
    with torch.no_grad():
        expected = host(images)
        for pruner in ("abt", "manual"):
            model = sttabt.wrap(host, pruner=pruner, keep=1.0).eval()
            for executor in ("pruned", "masked"):
                assert (model(images, executor=executor) - expected).abs().max() <= 1e-5
        concrete = sttabt.wrap(host, p_logit=50.0).eval()  # every mask saturates at 1
        assert (concrete(images) - expected).abs().max() <= 1e-5


def test_nothing_pruned_lvvit_equals_plain_lvvit(images):
    host = timm.create_model("lvvit_small", **TINY).eval()
    model = sttabt.wrap(host, pruner="abt", keep=1.0).eval()
    with torch.no_grad():
        assert (model(images) - host(images)).abs().max() <= 1e-5


def test_soft_masks_are_differentiable(images):
    model = tiny(p_logit=0.0).train()
    out = model.forward_detailed(images[:2])
    assert out.masks.requires_grad
    loss = out.logits.sum() + model.pruner.regulariser(out.masks)
    loss.backward()
    assert model.pruner.p_logits.grad is not None and model.pruner.p_logits.grad.abs().sum() > 0
    assert any(p.grad is not None for p in model.scout.parameters()), "the scout is trained jointly"


def test_logits_shape_full_size_deit_small():
    model = timm.create_model("sttabt_deit_small", pruner="abt", keep=0.5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 224, 224)).shape == (2, 1000)


@pytest.mark.parametrize("kwargs, message", [
    (dict(pruner="nope"), "unknown pruner"),
    (dict(p_logit=float("nan")), "p_logit"),
    (dict(p_logit=float("inf")), "p_logit"),
    (dict(pruner="abt", keep=0.0), "keep ratio"),
    (dict(pruner="abt", keep=1.5), "keep ratio"),
    (dict(budget="sometimes"), "budget"),
    (dict(pruner="concrete", keep=0.5), "p_logit"),
])
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny(**kwargs)


def test_wrong_image_size_is_a_value_error():
    model = tiny()
    with pytest.raises(ValueError, match="img_size"):
        model(torch.randn(1, 3, 64, 64))


def test_unknown_model_and_pretrained(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model("sttabt_deit_gigantic")
    with pytest.raises(ValueError, match=r"offline.*pretrained_cfg_overlay=dict\(file="):
        timm.create_model("sttabt_deit_tiny", pretrained=True)


def test_soft_masks_cannot_be_pruned(images):
    with pytest.raises(ValueError, match="hard masks"):
        tiny()(images, hard=False, executor="pruned")
