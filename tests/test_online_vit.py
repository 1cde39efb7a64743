"""Online pruners on images: LTP thresholds and EViT on the host's own class-token attention.

They decide after each layer from the host's own attention; the pruned executor (tokens removed,
batched with padding when counts differ) must give what the masked one gives."""
import pytest
import timm
import torch

import sttabt
from sttabt.executors.online import forward_online_masked
from sttabt.pruners import EViTOnlinePruner, LTPPruner, create_pruner
from sttabt.pruners.layout import TokenLayout

from conftest import TINY, tiny

HOSTS = {
    "deit": ("deit_small_patch16_224", {}),
    "lvvit": ("lvvit_small", {}),
    "distilled": ("deit_tiny_distilled_patch16_224", {}),
    "registers": ("vit_small_patch16_224", dict(reg_tokens=4)),
    "avg": ("vit_small_patch16_224", dict(global_pool="avg", class_token=False)),
}
# a threshold that prunes some tokens of a random tiny host (uniform attention scores about 1 / T)
LTP = dict(pruner="ltp", threshold=0.04)
SHARPEN = 10.0
EVIT = dict(pruner="evit", keep=[1.0, 0.6, 0.4])


def host(kind):
    """A tiny host whose attention is peaked (larger q/k weights) rather than nearly uniform, as in
    trained models, so that thresholds on received attention tell tokens apart."""
    name, kwargs = HOSTS[kind]
    model = timm.create_model(name, **{**TINY, **kwargs}).eval()
    with torch.no_grad():
        for block in model.blocks:
            qk = block.attn.qkv.weight[: 2 * model.embed_dim]
            qk.mul_(SHARPEN)
    return model


@pytest.mark.parametrize("kind", list(HOSTS))
@pytest.mark.parametrize("options", [LTP, EVIT], ids=["ltp", "evit"])
def test_online_pruned_equals_masked(kind, options, images):
    if options["pruner"] == "evit" and kind == "avg":
        pytest.skip("EViT needs a class token")
    dense = host(kind)
    model = sttabt.wrap(dense, **options).eval()
    assert model.scout is None, "online pruners read the host's attention: no scout"
    prefix = dense.num_prefix_tokens
    ragged = False
    for batch in (1, 2, 5):
        x = images[:batch]
        with torch.no_grad():
            pruned = model.forward_detailed(x, executor="pruned")
            masked = model.forward_detailed(x, hard=True, executor="masked")
        assert (pruned.logits - masked.logits).abs().max() <= 1e-4
        assert torch.equal(pruned.masks, masked.masks), "both executors make the same decisions"
        masks = pruned.masks
        assert masks[:, :, :max(prefix, 1) if prefix else 0].eq(1).all()
        assert (masks[1:] <= masks[:-1]).all()
        assert masks[:-1, :, prefix:].mean() < 1, "something is pruned"
        counts = masks.sum(-1)
        ragged |= bool((counts != counts[:, :1]).any())
        # the decided plan, replayed by the planned masked executor, gives the same logits
        replay = sttabt.executors.forward_masked(model.host, x, masks).logits
        assert (replay - masked.logits).abs().max() <= 1e-4
    if options["pruner"] == "ltp":
        assert ragged, "thresholds keep different counts per image: the padded path must be exercised"
    else:
        assert counts.eq(counts[:, :1]).all()


def test_nothing_pruned_online_equals_dense(images):
    dense = host("distilled")
    with torch.no_grad():
        expected = dense(images)
        for options in (dict(pruner="evit", keep=1.0), dict(pruner="ltp", threshold=0.0)):
            model = sttabt.wrap(dense, **options).eval()
            for executor in ("pruned", "masked"):
                assert (model(images, executor=executor) - expected).abs().max() <= 1e-5


def test_online_evit_ranks_by_own_cls_attention():
    """One layer's decision: the class token's row ranks the live tokens, prefix tokens always kept."""
    pruner = EViTOnlinePruner(3, [1.0, 0.5, 0.5])
    probs = torch.zeros(1, 6, 6)
    probs[0, 0] = torch.tensor([0.0, 0.0, 0.1, 0.5, 0.3, 0.1])
    live = torch.ones(1, 6, dtype=torch.bool)
    keep = pruner.decide(0, probs, live, layout=TokenLayout(2))  # 2 prefix + ceil(0.5 * 5) - 1 = 2 patches
    assert keep.tolist() == [[True, True, False, True, True, False]]
    live[0, 3] = False  # a token dropped earlier is never picked again
    keep = pruner.decide(0, probs, live, layout=TokenLayout(2))
    assert keep.tolist() == [[True, True, True, False, True, False]]


def test_ltp_thresholds_and_soft_stage(images):
    pruner = create_pruner("ltp", 3, threshold=0.3)
    assert isinstance(pruner, LTPPruner)
    assert pruner.thresholds().tolist() == pytest.approx([0.0, 0.1, 0.2])
    probs = torch.full((1, 4, 4), 0.25)
    probs[0, :, 3] = 0.05
    probs[0, :, 0] = 0.4
    live = torch.ones(1, 4, dtype=torch.bool)
    # scores: received attention / T = sum over 4 queries / 4
    keep = pruner.decide(1, probs, live)
    assert keep.tolist() == [[True, True, True, False]]
    pruner.temperature = 0.1  # a plain knob of the soft stage
    soft = pruner.decide(1, probs, live, soft=True)
    assert soft[0, 0] == 1 and 0 < soft[0, 3] < 0.5 < soft[0, 1] < 1
    model = tiny(**LTP).train()
    out = model.forward_detailed(images[:2])  # train mode: soft masks on the masked executor
    assert out.masks.requires_grad and ((out.masks > 0) & (out.masks < 1)).any()
    loss = out.logits.sum() + model.pruner.regulariser(out.masks, model.layout)
    loss.backward()
    assert model.pruner.threshold_delta.grad[1:-1].abs().sum() > 0


def test_online_flops_have_no_planning_pass(images):
    from sttabt.flops import sttabt_flops, vit_flops_per_sample

    model = tiny(**EVIT)
    with torch.no_grad():
        out = model.forward_detailed(images[:2])
    report = sttabt_flops(model, out.masks)
    assert report.scout.total == 0
    # the planned count of the same sets, plus the queries and scores of the tokens each layer drops
    assert report.host.total > vit_flops_per_sample(model.host, out.masks.sum(-1)).total
    assert report.total < report.dense.total


def test_registered_online_models_and_static_counts(images):
    model = timm.create_model("sttabt_deit_small", **TINY, pruner="ltp", threshold=0.02)
    assert isinstance(model.pruner, LTPPruner) and model.scout is None
    assert "scout" not in " ".join(model.state_dict())
    evit = tiny(**EVIT)
    with torch.no_grad():
        masks = evit.forward_detailed(images[:3]).masks
    assert masks.sum(-1).eq(torch.tensor(evit.static_counts()).float()[:, None]).all()
    with pytest.raises(ValueError, match="no static budget"):
        model(images[:1].clone(), budget="static")
    with pytest.raises(ValueError, match="threshold"):
        create_pruner("abt", 3, threshold=0.1)


def test_lvvit_with_every_patch_dropped(images):
    """A threshold that drops every patch: LV-ViT's token head then reads no patch (no aux term),
    in both executors."""
    model = sttabt.wrap(host("lvvit"), pruner="ltp", threshold=1.0).eval()
    with torch.no_grad():
        pruned = model.forward_detailed(images[:2], executor="pruned")
        masked = model(images[:2], hard=True, executor="masked")
    assert pruned.masks[2:, :, 1:].sum() == 0
    assert (pruned.logits - masked).abs().max() <= 1e-4
