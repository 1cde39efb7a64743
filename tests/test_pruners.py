"""The pure mask maths on small hand-made tensors."""
import math

import pytest
import torch

from sttabt.pruners import backtrack_topk, concrete_masks, forward_topk, manual_schedule
from sttabt.pruners.masks import fill_to_count, keep_count


def _random_attention(depth=4, batch=5, tokens=9, heads=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, heads, tokens, tokens, generator=g) * 2 for _ in range(depth)]


def _assert_plan(masks):
    assert masks[:, :, 0].eq(1).all(), "CLS must be in every set"
    assert (masks[1:] <= masks[:-1] + 1e-6).all(), "sets must be nested"


def test_keep_count_is_ceil_and_robust_to_float_error():
    assert keep_count(0.5, 197) == 99
    assert keep_count(0.3, 10) == 3
    assert keep_count(1e-9, 10) == 1


def test_fill_to_count_keeps_required_then_best():
    score = torch.tensor([[0.0, 5.0, 1.0, 4.0, 3.0]])
    must = torch.tensor([[True, False, True, False, False]])
    kept = fill_to_count(score, must, torch.tensor([3]))
    assert kept.tolist() == [[True, True, True, False, False]]


def test_backtrack_follows_the_attention_of_cls():
    # one layer, CLS attends to token 3 only: keeping 2 of 5 tokens keeps CLS and token 3
    attn = torch.zeros(1, 5, 5)
    attn[0, 0, 3] = 1.0
    attn[0, 1:, 1] = 1.0  # others attend to token 1, but they are not needed by CLS
    masks = backtrack_topk([attn], [0.4])
    assert masks[0, 0].tolist() == [1, 0, 0, 1, 0]
    assert masks[1, 0].tolist() == [1, 0, 0, 0, 0]


def test_backtrack_batched_equals_one_by_one():
    attn = [a.softmax(-1).mean(1) for a in _random_attention()]
    keep = [0.6, 0.5, 0.4, 0.3]
    for budget in ("per_sample", "fixed"):
        batched = backtrack_topk(attn, keep, budget=budget)
        _assert_plan(batched)
        if budget == "per_sample":
            for b in range(attn[0].shape[0]):
                single = backtrack_topk([a[b : b + 1] for a in attn], keep, budget=budget)
                assert torch.equal(single[:, 0], batched[:, b])
        else:
            counts = batched.sum(-1)
            assert (counts == counts[:, :1]).all(), "fixed budget: equal counts across the batch"


def test_concrete_soft_and_hard_agree_and_cls_kept():
    logits = _random_attention()
    p_logits = torch.tensor([0.5, 0.0, -0.5, -1.0])
    soft = concrete_masks(logits, p_logits, hard=False)
    hard = concrete_masks(logits, p_logits, hard=True)
    _assert_plan(soft)
    _assert_plan(hard)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    # the recursion runs on the soft masks in both modes: every hard set is its soft mask >= 0.5
    assert torch.equal(soft >= 0.5, hard > 0.5)


def test_concrete_p_logit_moves_the_keep_ratio():
    logits = _random_attention(depth=3, tokens=16)
    ratios = [concrete_masks(logits, torch.full((3,), v), hard=True)[:-1].mean().item() for v in (-3.0, 0.0, 3.0)]
    assert ratios[0] < ratios[1] < ratios[2]


def test_concrete_is_differentiable_in_p_logits():
    logits = _random_attention()
    p_logits = torch.zeros(4, requires_grad=True)
    concrete_masks(logits, p_logits, hard=False)[:-1].mean().backward()
    assert p_logits.grad is not None and torch.isfinite(p_logits.grad).all() and p_logits.grad.abs().sum() > 0


def test_concrete_fixed_budget_equal_counts():
    masks = concrete_masks(_random_attention(), torch.zeros(4), hard=True, budget="fixed")
    _assert_plan(masks)
    counts = masks.sum(-1)
    assert (counts == counts[:, :1]).all()
    with pytest.raises(ValueError, match="need budget='per_sample'"):
        concrete_masks(_random_attention(), torch.zeros(4), hard=True, budget="fixed",
                       valid=torch.ones(5, 9, dtype=torch.bool))


def test_padding_is_never_kept():
    logits = _random_attention(batch=2)
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 6:] = False
    masks = concrete_masks(logits, torch.full((4,), 3.0), hard=True, valid=valid)
    assert masks[:-1, 1, 6:].eq(0).all()


def test_manual_schedule_is_ltp_like():
    schedule = manual_schedule(12, 0.4)
    assert schedule[:3] == [1.0, 1.0, 1.0] and math.isclose(schedule[-1], 0.4)
    assert all(a >= b for a, b in zip(schedule, schedule[1:]))
    masks = forward_topk([a.softmax(-1).mean(1) for a in _random_attention()], [1.0, 0.8, 0.6, 0.4])
    _assert_plan(masks)
    assert masks.sum(-1)[:, 0].tolist() == [9, 8, 6, 4, 1]
