"""The pruning maths against plain transcriptions of the reference arithmetic (DESIGN.md 3.3 and 3.6).

The ``reference_*`` functions below are written as loops over Python floats, step by step as the
reference code computes them (the -10000 key bias on padding before the standardisation, the
population std, the back-tracking on the soft masks in both modes, the hard mask ``m >= 0.5``; for
LTP, layer 0 skipped and the thresholds ``final * i / L``). The library's batched tensor code must give
the same numbers, padded and unpadded, soft and hard.
"""
from __future__ import annotations

import math

import pytest
import torch

import ltp_nlp  # noqa: F401  (registers the Auto classes)
from ltp_nlp import LTPConfig, LTPForSequenceClassification
from ltp_nlp.pruners import ThresholdPruner
from sttabt.pruners import ConcretePruner, concrete_masks

REFERENCE_KEY_BIAS = -10000.0  # the reference's additive attention mask on padding keys
P, TAU, STD_EPS = 0.1, 0.1, 1e-7


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    return math.exp(x) / (1.0 + math.exp(x))


def _logit(s: float) -> float:
    if s <= 0:
        return -math.inf
    if s >= 1:
        return math.inf
    return math.log(s) - math.log(1.0 - s)


def reference_concrete(logits: list[list[list[list[float]]]], p_logits: list[float], length: int):
    """One sample: ``logits[l][h][q][k]`` pre-softmax attention of the scout, the first ``length`` tokens
    real. Returns (soft, hard) as lists of L + 1 masks of T floats (``[l]``: the input set of layer l)."""
    depth, heads, tokens = len(logits), len(logits[0]), len(logits[0][0])
    valid = [1.0 if k < length else 0.0 for k in range(tokens)]
    c = [1.0] + [0.0] * (tokens - 1)          # one-hot(CLS)
    m_next = list(c)                           # m_L
    soft = [m_next]
    for layer in reversed(range(depth)):
        # steps 1-2: key bias, standardise over the valid keys (population std), Phi, mean over heads
        u = [[0.0] * tokens for _ in range(tokens)]
        for h in range(heads):
            for q in range(tokens):
                row = [logits[layer][h][q][k] + (0.0 if valid[k] else REFERENCE_KEY_BIAS) for k in range(tokens)]
                keys = [row[k] for k in range(tokens) if valid[k]]
                mean = sum(keys) / len(keys)
                std = math.sqrt(sum((x - mean) ** 2 for x in keys) / len(keys))
                for k in range(tokens):
                    z = (row[k] - mean) / (std + STD_EPS)
                    u[q][k] += 0.5 * (1.0 + math.erf(z / math.sqrt(2.0))) / heads
        # steps 3-4: rows weighted by the soft m_{l+1} and the previous scores c
        total = sum(m_next)
        s = [sum(u[q][k] * m_next[q] * (P * c[q] + 1 - P) for q in range(tokens)) / total for k in range(tokens)]
        # step 5
        top = max(s)
        s = [(0.01 + 0.99 * s[k] / top) * valid[k] for k in range(tokens)]
        c = s
        # steps 6-7
        m = []
        for k in range(tokens):
            relaxed = _sigmoid((p_logits[layer] + _logit(s[k])) / TAU)
            m.append(max(relaxed, m_next[k]))
        soft.append(m)
        m_next = m
    soft = soft[::-1]
    hard = [[1.0 if x >= 0.5 else 0.0 for x in mask] for mask in soft]
    return soft, hard


def reference_plan(logits: list[torch.Tensor], p_logits: torch.Tensor, lengths: list[int]):
    """(L + 1, B, T) soft and hard plans, sample by sample."""
    soft, hard = [], []
    for b, n in enumerate(lengths):
        s, h = reference_concrete([a[b].tolist() for a in logits], p_logits.tolist(), n)
        soft.append(s)
        hard.append(h)
    return (torch.tensor(soft, dtype=torch.float64).transpose(0, 1),
            torch.tensor(hard, dtype=torch.float64).transpose(0, 1))


def _logits(depth, batch, tokens, heads=2, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, heads, tokens, tokens, generator=g) * 2).to(dtype) for _ in range(depth)]


def _valid(lengths, tokens):
    return torch.arange(tokens)[None, :] < torch.tensor(lengths)[:, None]


def _assert_matches(got_soft, got_hard, want_soft, want_hard, valid):
    assert (got_soft.double() - want_soft).abs().max() <= 1e-4
    assert torch.equal(got_hard.double(), want_hard)
    real = want_hard[:-1][:, valid]
    assert 0 < real.mean() < 1, "the case must keep some tokens and drop others"


@pytest.mark.parametrize("lengths", [None, [14, 9, 5, 14, 11, 2]], ids=["unpadded", "padded"])
def test_vision_concrete_pruner_matches_reference(lengths):
    depth, tokens = 5, 14
    logits = _logits(depth, 6, tokens, seed=3)
    pruner = ConcretePruner(depth, p_logit=0.0).double()
    with torch.no_grad():
        pruner.p_logits.copy_(torch.tensor([0.3, -0.2, 0.0, -0.5, 0.1]))
    valid = None if lengths is None else _valid(lengths, tokens)
    soft = pruner.plan(logits, hard=False, valid=valid)
    hard = pruner.plan(logits, hard=True, valid=valid)
    want_soft, want_hard = reference_plan(logits, pruner.p_logits.detach(), lengths or [tokens] * 6)
    _assert_matches(soft, hard, want_soft, want_hard, torch.ones(6, tokens, dtype=torch.bool) if valid is None else valid)


def test_hard_masks_back_track_on_soft_masks():
    """On this case the older rule (the recursion continued on the hard masks) disagreed with the
    reference on 10 of the 56 (sample, layer) sets; the library must agree on all of them."""
    depth, tokens, batch = 6, 20, 8
    logits = _logits(depth, batch, tokens, seed=1)
    p_logits = torch.full((depth,), -1.0, dtype=torch.float64)
    hard = concrete_masks(logits, p_logits, hard=True)
    _, want_hard = reference_plan(logits, p_logits, [tokens] * batch)
    assert torch.equal(hard, want_hard)
    assert (hard[1:] <= hard[:-1]).all() and hard[:, :, 0].eq(1).all()


def test_float32_soft_masks_match_reference():
    logits = _logits(4, 3, 10, seed=5)
    p_logits = torch.tensor([0.2, 0.0, -0.3, -0.6])
    valid = _valid([10, 6, 3], 10)
    soft = concrete_masks([a.float() for a in logits], p_logits.float(), hard=False, valid=valid)
    want_soft, _ = reference_plan(logits, p_logits.double(), [10, 6, 3])
    assert (soft.double() - want_soft).abs().max() <= 1e-4


def test_padding_takes_no_part_in_the_concrete_statistics():
    """A sample's plan does not depend on its padding: not on what the padding logits hold, nor on how
    wide the batch is (the sample alone, unpadded, gets the same masks)."""
    depth, tokens = 4, 12
    logits = _logits(depth, 2, tokens, seed=7, dtype=torch.float32)
    valid = _valid([12, 7], tokens)
    noisy = [a.clone() for a in logits]
    for a in noisy:
        a[1, :, :, 7:] = 50.0   # padding keys with huge logits
        a[1, :, 7:, :] = -30.0  # padding queries
    p_logits = torch.tensor([0.4, 0.0, -0.4, -0.2])
    for hard in (False, True):
        plan = concrete_masks(logits, p_logits, hard=hard, valid=valid)
        assert torch.equal(concrete_masks(noisy, p_logits, hard=hard, valid=valid), plan)
        alone = concrete_masks([a[1:, :, :7, :7] for a in logits], p_logits, hard=hard)
        torch.testing.assert_close(plan[:, 1, :7], alone[:, 0], atol=1e-6, rtol=0)
        assert plan[:, 1, 7:].eq(0).all()


# ---- the text concrete pruner (through the LTP model and its scout) ---------------------------------

TINY_TEXT = dict(vocab_size=60, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=48,
                 max_position_embeddings=40, initializer_range=0.3, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0, num_labels=3)


def _text_batch(lengths, width=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    width = width or max(lengths)
    ids = torch.randint(5, 60, (len(lengths), width), generator=g)
    mask = _valid(lengths, width).long()
    ids[:, 0] = 3
    ids[mask == 0] = 0
    return ids, mask


def _text_model(**prune) -> LTPForSequenceClassification:
    torch.manual_seed(0)
    return LTPForSequenceClassification(LTPConfig(host_type="bert", score_length=16, **{**TINY_TEXT, **prune})).eval()


@pytest.mark.parametrize("lengths", [[12, 12, 12], [12, 7, 3, 10]], ids=["unpadded", "padded"])
def test_text_concrete_pruner_matches_reference(lengths):
    model = _text_model(prune_mode="sttabt_concrete", p_logit=-0.3).double()
    ids, mask = _text_batch(lengths)
    valid = mask.bool()
    with torch.no_grad():
        logits = list(model.ltp.scout(ids, mask).attention)   # raw logits: padding not biased here
        soft = model.ltp.plan(ids, valid, hard=False)
        hard = model.ltp.plan(ids, valid, hard=True)
    want_soft, want_hard = reference_plan(logits, model.ltp.pruner.p_logits.detach(), lengths)
    _assert_matches(soft, hard, want_soft, want_hard, valid)


# ---- LTP (DESIGN.md 3.6) ----------------------------------------------------------------------------

def reference_ltp_soft(probs: list[list[list[list[float]]]], live: list[float], final: float, temperature: float,
                       length: int):
    """One sample's soft masks of the layers 1 .. L-1 (layer 0 is skipped: threshold 0) from each
    layer's attention probabilities ``probs[l][h][q][k]``; score = received attention over the live
    queries / (H * length); CLS kept (our documented deviation)."""
    depth, heads, tokens = len(probs), len(probs[0]), len(probs[0][0])
    masks = {}
    for layer in range(1, depth):
        threshold = final * layer / depth
        mask = []
        for k in range(tokens):
            score = sum(probs[layer][h][q][k] * live[q] for h in range(heads) for q in range(tokens)) / (heads * length)
            mask.append(_sigmoid((score - threshold) / temperature))
        mask[0] = 1.0
        masks[layer] = mask
    return masks


def _probs(depth, batch, tokens, valid, seed=0):
    g = torch.Generator().manual_seed(seed)
    bias = torch.where(valid, 0.0, -math.inf)[:, None, None, :]
    return [(torch.randn(batch, 2, tokens, tokens, generator=g, dtype=torch.float64) + bias).softmax(-1)
            for _ in range(depth)]


def test_ltp_soft_masks_and_regulariser_match_reference():
    depth, tokens, final, temperature, fixed = 4, 10, 0.4, 0.05, 16
    lengths = [10, 6, 3]
    valid = _valid(lengths, tokens)
    probs = _probs(depth, 3, tokens, valid, seed=2)
    pruner = ThresholdPruner(depth, final, scoring_mode="mean", score_length=fixed).double()
    masks = [pruner.decide(layer, probs[layer], valid, valid.sum(-1), soft=True, temperature=temperature)
             for layer in range(depth)]
    assert torch.equal(masks[0], torch.ones(3, tokens, dtype=torch.float64))   # layer 0: no mask
    want = [reference_ltp_soft([p[b].tolist() for p in probs], valid[b].double().tolist(), final, temperature, fixed)
            for b in range(3)]
    for layer in range(1, depth):
        expected = torch.tensor([w[layer] for w in want], dtype=torch.float64)
        assert (masks[layer] - expected).abs().max() <= 1e-6  # float32 threshold buffer
    # the regulariser: layers 1 .. L-1 only; over real tokens, or over `fixed` positions per sample
    real = sum(sum(w[layer][k] for b, w in enumerate(want) for k in range(lengths[b])) / sum(lengths)
               for layer in range(1, depth))
    assert pruner.regulariser(masks, valid).item() == pytest.approx(real, abs=1e-6)
    padded = 0.0
    for layer in range(1, depth):
        pad = _sigmoid(-final * layer / depth / temperature)   # the mask of a zero score
        padded += sum(sum(w[layer]) + (fixed - tokens) * pad for w in want) / (3 * fixed)
    got = pruner.regulariser(masks, valid, temperature=temperature, pad_to=fixed)
    assert got.item() == pytest.approx(padded, abs=1e-6)


def test_ltp_layer_0_is_skipped():
    model = _text_model(prune_mode="absolute_threshold", final_token_threshold=0.08)
    pruner = model.ltp.pruner
    with torch.no_grad():
        pruner.threshold_delta[0] = 10.0   # what an older checkpoint may hold: loaded, ignored
    assert pruner.thresholds()[0].item() == 0.0
    ids, mask = _text_batch([12, 7, 3, 12])
    out = model.train()(input_ids=ids, attention_mask=mask, masking_mode="soft", temperature=1e-2)
    out.pruning_loss.backward()
    grad = pruner.threshold_delta.grad
    assert grad[0].item() == 0.0 and grad[1:].abs().min() > 0
    assert out.mask_means[0].item() == 1.0
    assert out.pruning_loss.item() == pytest.approx(out.mask_means[1:].sum().item(), abs=1e-6)
    model.eval()
    with torch.no_grad():
        hard = model(input_ids=ids, attention_mask=mask, masking_mode="hard", executor="masked")
    assert torch.equal(hard.counts[1], hard.counts[0])    # layer 0 prunes nothing
    assert (hard.counts[-1] < hard.counts[0]).any()


def test_ltp_layer_0_delta_stays_put_in_training():
    model = _text_model(prune_mode="absolute_threshold", final_token_threshold=0.08)
    pruner = model.ltp.pruner
    optimizer = torch.optim.AdamW(pruner.parameters(), lr=1e-2, weight_decay=0.0)
    ids, mask = _text_batch([12, 7, 3, 12])
    for _ in range(3):
        out = model.train()(input_ids=ids, attention_mask=mask, masking_mode="soft", temperature=1e-2)
        optimizer.zero_grad()
        out.pruning_loss.backward()
        optimizer.step()
    assert pruner.threshold_delta[0].item() == 0.0 and pruner.threshold_delta[1:].abs().min() > 0


def test_old_checkpoint_with_layer_0_delta_loads(tmp_path):
    model = _text_model(prune_mode="absolute_threshold", final_token_threshold=0.08)
    with torch.no_grad():
        model.ltp.pruner.threshold_delta.copy_(torch.tensor([0.5, 0.01, 0.0, -0.01]))
    model.save_pretrained(tmp_path)
    loaded = LTPForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded.ltp.pruner.threshold_delta, model.ltp.pruner.threshold_delta)
    ids, mask = _text_batch([12, 7, 3, 12])
    with torch.no_grad():
        got = loaded(input_ids=ids, attention_mask=mask)
        loaded.ltp.pruner.threshold_delta[0] = 0.0
        same = loaded(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(got.logits, same.logits, atol=0, rtol=0)


def test_faithful_regulariser_equals_padding_to_the_fixed_length():
    """``regularise_padding``: the regulariser of a batch padded to its longest sentence equals the one
    of the same batch padded to ``score_length`` (16 here; 128 in the reference), as the reference did."""
    model = _text_model(prune_mode="absolute_threshold", final_token_threshold=0.08, regularise_padding=True).train()
    lengths = [12, 7, 3, 10]
    short, short_mask = _text_batch(lengths)
    long, long_mask = _text_batch(lengths, width=16)
    long[:, :12] = short
    kwargs = dict(masking_mode="soft", temperature=1e-2)
    a = model(input_ids=short, attention_mask=short_mask, **kwargs)
    b = model(input_ids=long, attention_mask=long_mask, **kwargs)
    torch.testing.assert_close(a.pruning_loss, b.pruning_loss, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    plain = _text_model(prune_mode="absolute_threshold", final_token_threshold=0.08).train()
    c = plain(input_ids=short, attention_mask=short_mask, **kwargs)
    assert abs(c.pruning_loss.item() - a.pruning_loss.item()) > 1e-3   # the two variants differ
    with pytest.raises(ValueError, match="fixed length 16"):
        wide, wide_mask = _text_batch([20, 5])
        model(input_ids=wide, attention_mask=wide_mask, **kwargs)


def test_padding_takes_no_part_in_the_top_k_pruners():
    """ABT, EViT-style and LTP's top-k: a padded sample keeps what it keeps alone, unpadded, whatever
    the padding rows hold (padding keys have zero probability, as the text path gives them)."""
    from ltp_nlp.ltp import received_attention, topk_keep
    from sttabt.pruners import backtrack_topk, cls_topk

    depth, tokens, lengths = 4, 12, [12, 7, 9]
    valid = _valid(lengths, tokens)
    logits = _logits(depth, 3, tokens, seed=4)
    for a in logits:
        a[1, :, 7:, :] = 40.0   # padding query rows: garbage
    probs = [(a + torch.where(valid, 0.0, -math.inf)[:, None, None, :]).softmax(-1) for a in logits]
    mean_probs = [p.mean(1) for p in probs]
    keep = [0.8, 0.6, 0.5, 0.3]
    for plan_of in (lambda attn, v: backtrack_topk(attn, keep, budget="per_sample", valid=v),
                    lambda attn, v: cls_topk(attn, keep, budget="per_sample", valid=v)):
        plan = plan_of(mean_probs, valid)
        for b, n in enumerate(lengths):
            alone = plan_of([p[b:b + 1, :n, :n] for p in mean_probs], None)
            assert torch.equal(plan[:, b, :n], alone[:, 0]) and plan[:, b, n:].eq(0).all()
    live, lengths_t = valid, valid.sum(-1)
    kept = topk_keep(received_attention(probs[1], live, 1), live, lengths_t, 0.5)
    for b, n in enumerate(lengths):
        one = torch.ones(1, n, dtype=torch.bool)
        alone = topk_keep(received_attention(probs[1][b:b + 1, :, :n, :n], one, 1), one, lengths_t[b:b + 1], 0.5)
        assert torch.equal(kept[b, :n], alone[0]) and not kept[b, n:].any()
