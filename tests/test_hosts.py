"""Any pruner on any host: the host adapters (sttabt.hosts) under the one set of executor loops
(sttabt.executors.core). Every vision pruner, planned and online, runs on BERT and RoBERTa encoders
through the text adapter, with padding and ragged counts, and the pruned run equals the masked one;
the ViT and LV-ViT families are covered by test_executors, test_prefix_tokens and test_online_vit."""
import pytest
import torch

from sttabt.executors import core
from sttabt.hosts import HostAdapter, TimmViTAdapter
from sttabt.hosts.bert import BertAdapter, embed
from sttabt.pruners import create_pruner
from sttabt.pruners.layout import TokenLayout

from test_ltp_models import batch, host_model

PLANNED = {"concrete": dict(p_logit=-0.5), "abt": dict(keep=0.4), "evit_scout": dict(keep=[1.0, 1.0, 0.6, 0.4])}
ONLINE = {"evit": dict(keep=[1.0, 1.0, 0.6, 0.4]), "ltp": dict(threshold=0.4)}
LENGTHS = {1: (9,), 2: (12, 7), 5: (12, 7, 3, 12, 9)}


def encoder(host_type):
    host = host_model(host_type)
    base = getattr(host, host.base_model_prefix)
    return base.embeddings, base.encoder.layer


def own_attention(layers, x, valid, kind):
    """The host's own attention per layer from a dense pass (the oracle's source): logits or
    head-averaged probabilities."""
    adapter, out = BertAdapter(layers), []
    for layer in layers:
        probs, v = adapter.attention(layer, x, valid)
        if kind == "logits":
            from sttabt.hosts.bert import attention_logits, query_key_value

            q, k, _ = query_key_value(layer, x)
            out.append(attention_logits(layer, q, k))
        else:
            out.append(probs.mean(1))
        x = adapter.finish(layer, x, probs, v, None)
    return out


@pytest.mark.parametrize("host_type", ["bert", "roberta"])
@pytest.mark.parametrize("name", list(PLANNED))
@pytest.mark.parametrize("size", [1, 2, 5])
def test_planned_vision_pruners_on_text_hosts(host_type, name, size):
    embeddings, layers = encoder(host_type)
    ids, mask = batch(host_type, LENGTHS[size])
    valid = mask.bool()
    pruner = create_pruner(name, len(layers), **PLANNED[name])
    with torch.no_grad():
        x = embed(embeddings, ids, None)
        plan = pruner.plan(own_attention(layers, x, valid, pruner.attention), hard=True, budget="per_sample",
                           valid=valid)
        masked = core.planned_masked(BertAdapter(layers), x, plan, valid).tokens[:, 0]
        pruned = core.planned_pruned(BertAdapter(layers), x, plan).tokens[:, 0]
    assert (pruned - masked).abs().max() <= 1e-4
    assert (plan[:, ~valid] == 0).all() and (plan[:, :, 0] == 1).all()
    assert plan[1:-1].sum() < plan[:1].sum() * (len(plan) - 2), "the plan must prune"


@pytest.mark.parametrize("host_type", ["bert", "roberta"])
@pytest.mark.parametrize("name", list(ONLINE))
@pytest.mark.parametrize("size", [1, 2, 5])
def test_online_vision_pruners_on_text_hosts(host_type, name, size):
    embeddings, layers = encoder(host_type)
    ids, mask = batch(host_type, LENGTHS[size])
    valid = mask.bool()
    pruner = create_pruner(name, len(layers), **ONLINE[name])
    layout = TokenLayout(1)

    def decide(layer, probs, live):
        return pruner.decide(layer, probs.mean(1), live, layout=layout, tokens=valid.shape[1])

    with torch.no_grad():
        x = embed(embeddings, ids, None)
        masked = core.online_masked(BertAdapter(layers), x, decide, valid)
        pruned = core.online_pruned(BertAdapter(layers), x, decide, valid)
    assert (pruned.tokens[:, 0] - masked.tokens[:, 0]).abs().max() <= 1e-4
    assert torch.equal(pruned.masks, masked.masks)
    assert (masked.masks[:, ~valid] == 0).all() and (masked.masks[:, :, 0] == 1).all()
    assert masked.masks[1:-1].sum() < masked.masks[:1].sum() * (len(layers) - 1), "something is pruned"


def test_adapters_share_one_interface():
    import timm

    vit = timm.create_model("vit_small_patch16_224", img_size=32, patch_size=8, depth=2, embed_dim=48,
                            num_heads=3, reg_tokens=2)
    adapters = (TimmViTAdapter(vit), BertAdapter(encoder("bert")[1]))
    assert all(isinstance(a, HostAdapter) for a in adapters)
    assert adapters[0].prefix == 3 and adapters[1].prefix == 1
    for name in ("attention", "finish", "recorded_layer", "scores", "dense_layer", "pruned_layer", "layer_cost"):
        assert all(getattr(type(a), name) is not getattr(HostAdapter, name) for a in adapters), name
