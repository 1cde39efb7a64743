"""Hosts with more prefix tokens than a class token, and hosts that average their patch tokens.

DeiT distilled (class + distillation token, two heads averaged), ViTs with register tokens and ViTs
with ``global_pool='avg'`` (with or without a class token): nothing pruned equals the dense timm model;
pruned equals masked for every pruner and batching mode; prefix tokens are in every set of every plan.
"""
import pytest
import timm
import torch

import sttabt
from sttabt.pruners import PRUNERS
from sttabt.pruners.layout import TokenLayout, layout_of

from conftest import TINY

HOSTS = {
    "distilled": ("deit_tiny_distilled_patch16_224", {}),
    "registers": ("vit_small_patch16_224", dict(reg_tokens=4)),
    "avg": ("vit_small_patch16_224", dict(global_pool="avg")),
    "avg_no_cls": ("vit_small_patch16_224", dict(global_pool="avg", class_token=False)),
    "avg_registers": ("vit_small_patch16_224", dict(global_pool="avg", class_token=False, reg_tokens=2)),
}
PLANNED = [p for p in PRUNERS if p in ("concrete", "abt", "abt_oracle", "manual", "evit_scout", "evit")]


def host(kind: str):
    name, kwargs = HOSTS[kind]
    return timm.create_model(name, **{**TINY, **kwargs}).eval()


def options(pruner: str) -> dict:
    if pruner == "concrete":  # random tiny hosts score keys evenly: a low logit makes the masks prune
        return dict(p_logit=-2.0)
    if pruner in ("manual", "evit", "evit_scout"):
        return dict(keep=[1.0, 0.6, 0.4])
    return dict(keep=0.4)


@pytest.mark.parametrize("kind", list(HOSTS))
def test_nothing_pruned_equals_dense_host(kind, images):
    dense = host(kind)
    with torch.no_grad():
        expected = dense(images)
        for pruner, kwargs in (("abt", dict(keep=1.0)), ("manual", dict(keep=1.0)), ("concrete", dict(p_logit=50.0))):
            model = sttabt.wrap(dense, pruner=pruner, **kwargs).eval()
            for executor in ("pruned", "masked"):
                got = model(images, executor=executor)
                assert (got - expected).abs().max() <= 1e-5, (pruner, executor)


@pytest.mark.parametrize("kind", list(HOSTS))
@pytest.mark.parametrize("pruner", PLANNED)
@pytest.mark.parametrize("budget", ["per_sample", "fixed", "static"])
def test_pruned_equals_masked(kind, pruner, budget, images):
    if pruner.startswith("evit") and kind in ("avg_no_cls", "avg_registers"):
        pytest.skip("EViT ranks by the class token's attention: no class token")
    dense = host(kind)
    model = sttabt.wrap(dense, pruner=pruner, **options(pruner)).eval()
    if budget == "static" and pruner == "concrete":
        sttabt.calibrate(model, images)
    prefix = dense.num_prefix_tokens
    for batch in (1, 2, 5):
        x = images[:batch]
        with torch.no_grad():
            out = model.forward_detailed(x, budget=budget)
            masked = model(x, hard=True, executor="masked", budget=budget)
        assert (out.logits - masked).abs().max() <= 1e-4
        masks = out.masks
        assert masks[:, :, :prefix].eq(1).all(), "prefix tokens are never dropped"
        assert (masks[1:] <= masks[:-1]).all(), "masks are nested"
        assert masks[:-1, :, prefix:].mean() < 1, "the plan must prune patches"
        if dense.global_pool == "avg":
            assert torch.equal(masks[-1], masks[-2]), "an avg head averages what the last layer takes in"
            assert masks[-1, :, prefix:].sum(-1).min() >= 1
        else:
            assert masks[-1].sum(-1).eq(prefix).all(), "the last layer outputs the prefix tokens only"
        if budget == "static":
            assert masks.sum(-1).eq(torch.tensor(model.static_counts()).float()[:, None]).all()


def test_prefix_tokens_are_not_counted_as_patches():
    """A keep ratio keeps the same patches whatever the number of prefix tokens."""
    one, five = TokenLayout(1), TokenLayout(5)
    for ratio in (0.1, 0.3, 0.5, 0.7, 1.0):
        assert five.count(ratio, 64 + 5) - 5 == one.count(ratio, 64 + 1) - 1
    assert TokenLayout(0, "avg").count(0.001, 64) == 1  # an avg head keeps at least one patch
    with pytest.raises(ValueError, match="class token"):
        TokenLayout(0, "token")


def test_registers_keep_the_patches_of_a_class_token_host(images):
    """Register tokens never take a patch's place: the same keep ratio keeps as many patches."""
    plain = sttabt.wrap(host("avg"), pruner="abt", keep=0.4)
    registers = sttabt.wrap(timm.create_model("vit_small_patch16_224", **{**TINY, "global_pool": "avg",
                                                                          "reg_tokens": 3}), pruner="abt", keep=0.4)
    assert [c - 1 for c in plain.static_counts()] == [c - 4 for c in registers.static_counts()]


def test_layout_of_hosts():
    assert layout_of(host("distilled")) == TokenLayout(2, "token")
    assert layout_of(host("registers")) == TokenLayout(5, "token")
    assert layout_of(host("avg_no_cls")) == TokenLayout(0, "avg")


def test_avg_head_averages_only_kept_patches(images):
    """The avg head of the pruned model is the mean of the kept patch tokens after the final norm."""
    model = sttabt.wrap(host("avg"), pruner="abt", keep=0.4).eval()
    with torch.no_grad():
        out = model.forward_detailed(images[:3])
        features = model.forward_features(images[:3], executor="masked")
        kept = out.masks[-1, :, 1:, None]
        pooled = (features[:, 1:] * kept).sum(1) / kept.sum(1)
        expected = model.host.head(model.host.fc_norm(pooled))
        assert (expected - out.logits).abs().max() <= 1e-4
        assert (model.forward_head(features, token_mask=out.masks[-1]) - out.logits).abs().max() <= 1e-4


def test_distilled_heads_are_averaged_and_dist_token_is_not_decayed(images):
    model = sttabt.wrap(host("distilled"), pruner="abt", keep=0.5).eval()
    with torch.no_grad():
        features = model.forward_features(images[:2])
        cls, dist = model.host.head(features[:, 0]), model.host.head_dist(features[:, 1])
        assert ((cls + dist) / 2 - model(images[:2])).abs().max() <= 1e-4
    assert "host.dist_token" in model.no_weight_decay()
    assert not any(n.startswith("scout.net.head_dist") for n, _ in model.named_parameters())


def test_reset_classifier_keeps_the_hosts_pooling():
    model = sttabt.wrap(host("avg"), pruner="abt", keep=0.5)
    model.reset_classifier(5, "avg")
    assert model.host.head.out_features == 5
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(5, "token")


def test_registered_distilled_and_host_keywords(images):
    """``sttabt_deit_*_distilled`` and host keywords (``reg_tokens``, ``global_pool``) through timm."""
    distilled = timm.create_model("sttabt_deit_tiny_distilled", **TINY, pruner="abt", keep=1.0).eval()
    assert distilled.host.num_prefix_tokens == 2 and distilled.num_tokens == 64 + 2
    registers = timm.create_model("sttabt_deit_small", **TINY, reg_tokens=4, global_pool="avg").eval()
    assert registers.layout == TokenLayout(5, "avg") and registers.scout.net.num_prefix_tokens == 5
    with torch.no_grad():
        assert (distilled(images[:2]) - distilled.host(images[:2])).abs().max() <= 1e-5
        assert registers(images[:2]).shape == (2, 10)


def test_flops_count_prefix_tokens_but_not_as_patches(images):
    """FLOPs follow the tokens that run (prefix included); the keep ratios leave extra prefix tokens out."""
    from sttabt.flops import sttabt_flops, vit_flops_per_sample

    model = sttabt.wrap(host("registers"), pruner="abt", keep=0.4).eval()
    plain = sttabt.wrap(timm.create_model("vit_small_patch16_224", **TINY).eval(), pruner="abt", keep=0.4).eval()
    with torch.no_grad():
        masks, _ = model.plan(images[:2])
        plain_masks, _ = plain.plan(images[:2])
    report, plain_report = sttabt_flops(model, masks), sttabt_flops(plain, plain_masks)
    assert report.keep_per_layer == pytest.approx(plain_report.keep_per_layer)
    counts = masks.sum(-1)
    assert report.host.total == pytest.approx(vit_flops_per_sample(model.host, counts).total)
    assert report.host.total > plain_report.host.total  # the 4 registers run in every layer
