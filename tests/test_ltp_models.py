"""ltp_nlp models on tiny random BERT, RoBERTa and I-BERT hosts: identity with pruning off, pruned ==
masked in hard mode, CLS kept, padding never kept, batch sizes > 1, save / load round trips."""
import json

import pytest
import torch

import ltp_nlp  # noqa: F401  (registers the Auto classes)
from ltp_nlp import LTPConfig, LTPForSequenceClassification
from ltp_nlp.host import SEQUENCE_CLASSIFIERS
from transformers import AutoConfig, AutoModelForSequenceClassification

HOSTS = ("bert", "roberta", "ibert")
TINY = dict(vocab_size=60, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=48,
            max_position_embeddings=40, initializer_range=0.3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=3)


def host_model(host_type: str, seed: int = 0):
    torch.manual_seed(seed)
    config = AutoConfig.for_model(host_type, **TINY)
    return SEQUENCE_CLASSIFIERS[host_type](config).eval()


def ltp_from(host, host_type: str, **prune) -> LTPForSequenceClassification:
    config = LTPConfig(host_type=host_type, **{**TINY, **prune})
    model = LTPForSequenceClassification(config).eval()
    missing, unexpected = model.load_state_dict(host.state_dict(), strict=False)
    assert not unexpected
    assert all(".pruner." in k or ".scout." in k for k in missing), missing
    return model


def batch(host_type: str, lengths=(12, 7, 3, 12, 9), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    pad = 1 if host_type != "bert" else 0
    width = max(lengths)
    ids = torch.randint(5, 60, (len(lengths), width), generator=g)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    ids[:, 0] = 2 if host_type != "bert" else 3   # CLS / <s>
    ids[mask == 0] = pad
    return ids, mask


@pytest.mark.parametrize("host_type", HOSTS)
def test_pruning_off_equals_host(host_type):
    host = host_model(host_type)
    model = ltp_from(host, host_type)
    ids, mask = batch(host_type)
    with torch.no_grad():
        expected = host(input_ids=ids, attention_mask=mask).logits
        got = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


MODES = [
    dict(prune_mode="absolute_threshold", final_token_threshold=0.08),
    dict(prune_mode="absolute_threshold", final_token_threshold=0.2, scoring_mode="mean_norm"),
    dict(prune_mode="topk", token_keep_rate=0.3),
    dict(prune_mode="sttabt_concrete", p_logit=-0.5),
    dict(prune_mode="sttabt_abt", token_keep_rate=0.4),
    dict(prune_mode="sttabt_abt_oracle", token_keep_rate=0.4),
]


@pytest.mark.parametrize("host_type", HOSTS)
@pytest.mark.parametrize("prune", MODES, ids=lambda p: p["prune_mode"] + "-" + p.get("scoring_mode", ""))
@pytest.mark.parametrize("lengths", [(12, 7, 3, 12, 9), (8,), (10, 10)], ids=["ragged5", "one", "equal2"])
def test_pruned_equals_masked(host_type, prune, lengths):
    model = ltp_from(host_model(host_type), host_type, score_length=16, **prune)
    ids, mask = batch(host_type, lengths)
    with torch.no_grad():
        masked = model(input_ids=ids, attention_mask=mask, masking_mode="hard", executor="masked")
        pruned = model(input_ids=ids, attention_mask=mask, masking_mode="hard", executor="pruned")
    torch.testing.assert_close(pruned.logits, masked.logits, atol=1e-4, rtol=0)
    torch.testing.assert_close(pruned.counts, masked.counts)
    real = mask.sum(-1).float()
    counts = masked.counts
    assert (counts >= 1).all() and (counts <= real).all()  # CLS always kept, padding never
    if masked.plan is not None:
        assert (masked.plan[:, mask == 0] == 0).all() and (masked.plan[:, :, 0] == 1).all()
    else:
        assert torch.equal(counts[0], real)
    assert (counts[1:] <= counts[:-1]).all()                 # nested
    assert counts[1:].sum() < counts[0].sum() * (len(counts) - 1), "these settings must prune something"


@pytest.mark.parametrize("host_type", ["bert", "roberta"])
def test_soft_masks_and_regulariser(host_type):
    model = ltp_from(host_model(host_type), host_type, prune_mode="absolute_threshold", final_token_threshold=0.05,
                     score_length=16)
    ids, mask = batch(host_type)
    out = model.train()(input_ids=ids, attention_mask=mask, masking_mode="soft", temperature=1e-2)
    assert out.mask_means.shape == (4,) and 0 < float(out.mask_means.detach().min()) <= 1
    out.pruning_loss.backward()
    assert model.ltp.pruner.threshold_delta.grad.abs().sum() > 0


def test_masking_mode_errors():
    model = ltp_from(host_model("bert"), "bert", prune_mode="topk", token_keep_rate=0.5)
    ids, mask = batch("bert")
    with pytest.raises(ValueError, match="cannot use masking_mode='soft'"):
        model(input_ids=ids, attention_mask=mask, masking_mode="soft")
    with pytest.raises(ValueError, match="masking_mode must be"):
        model(input_ids=ids, attention_mask=mask, masking_mode="medium")
    with pytest.raises(ValueError, match="prune_mode must be one of"):
        LTPConfig(host_type="bert", prune_mode="random")


@pytest.mark.parametrize("host_type", HOSTS)
def test_save_load_round_trip(tmp_path, host_type):
    model = ltp_from(host_model(host_type), host_type, prune_mode="absolute_threshold", final_token_threshold=0.03,
                     scoring_mode="mean_norm", score_length=64)
    with torch.no_grad():
        model.ltp.pruner.threshold_delta.add_(0.01)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, LTPForSequenceClassification)
    for key in ("prune_mode", "final_token_threshold", "scoring_mode", "score_length", "host_type"):
        assert getattr(loaded.config, key) == getattr(model.config, key)
    ids, mask = batch(host_type)
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, attention_mask=mask).logits,
                                   model(input_ids=ids, attention_mask=mask).logits)


@pytest.mark.parametrize("host_type", HOSTS)
def test_hand_edited_reference_config_loads(tmp_path, host_type):
    """The reference's manual edit of a fine-tuned host checkpoint: no host_type field at all."""
    host = host_model(host_type)
    host.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(architectures=["LTPForSequenceClassification"], model_type="ltp", prune_mode="absolute_threshold",
                  final_token_threshold=0.01, scoring_mode="mean")
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert model.config.host_type == host_type and model.config.prune_mode == "absolute_threshold"
    loaded = model.state_dict()
    for key, value in host.state_dict().items():
        assert torch.equal(loaded[key], value), key
    assert model.ltp.pruner.threshold_delta.abs().sum() == 0


def test_checkpoint_of_another_architecture(tmp_path):
    host_model("roberta").save_pretrained(tmp_path)
    config = LTPConfig(host_type="bert", **TINY)
    with pytest.raises(ValueError, match="does not match a bert LTP model"):
        LTPForSequenceClassification.from_pretrained(tmp_path, config=config)


def test_switch_to_sttabt_needs_a_scout(tmp_path):
    host = host_model("bert")
    ltp_from(host, "bert").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no approximation network"):
        LTPForSequenceClassification.from_pretrained(tmp_path, prune_mode="sttabt_abt", token_keep_rate=0.5)
    model = LTPForSequenceClassification.from_pretrained(tmp_path, prune_mode="sttabt_abt", token_keep_rate=0.5,
                                                         init_scout="interpolate")
    assert model.config.prune_mode == "sttabt_abt" and model.config.token_keep_rate == 0.5
    scout = model.ltp.scout.net.state_dict()
    assert scout["bert.encoder.layer.0.attention.self.query.weight"].shape == (8, 8)
    assert torch.equal(scout["bert.embeddings.word_embeddings.weight"][:, 0],
                       host.state_dict()["bert.embeddings.word_embeddings.weight"][:, 0])  # interpolated init


def test_scout_distillation_loss_decreases():
    from sttabt.approx import distillation_loss

    model = ltp_from(host_model("roberta"), "roberta", prune_mode="sttabt_concrete")
    model.ltp.scout.reset_from(model)
    ids, mask = batch("roberta")
    with torch.no_grad():
        teacher = model.record(ids, mask)
    scout = model.ltp.scout
    optimizer = torch.optim.AdamW(scout.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = distillation_loss(scout(ids, mask), teacher, scout.hidden_proj, hidden_weight=1.0, valid=mask.bool()).total
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_reload_under_another_prune_mode_and_threshold(tmp_path):
    model = ltp_from(host_model("bert"), "bert", prune_mode="absolute_threshold", final_token_threshold=0.01)
    model.save_pretrained(tmp_path)
    other = LTPForSequenceClassification.from_pretrained(tmp_path, final_token_threshold=0.4)
    assert other.ltp.pruner.thresholds()[-1].item() == pytest.approx(0.4 * 3 / 4)
    topk = LTPForSequenceClassification.from_pretrained(tmp_path, prune_mode="topk", token_keep_rate=0.5)
    assert topk.config.prune_mode == "topk" and topk.ltp.pruner.rates[-1] == 0.5
