"""The analytic FLOPs of text hosts (through the BERT adapter's ``layer_cost``) equal fvcore's count of
the executed graph: dense, planned pruned, online pruned and the planning pass, on BERT and RoBERTa."""
import pytest
import torch
from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

from ltp_nlp.approx import planning_attention
from ltp_nlp.executors import run_dense, run_online_pruned, run_planned_pruned
from ltp_nlp.pruners import ThresholdPruner, TopKPruner
from sttabt.flops import encoder_flops, fvcore_flops
from sttabt.hosts.bert import BertAdapter

LENGTH, DEPTH = 11, 3
KW = dict(hidden_size=16, num_hidden_layers=DEPTH, num_attention_heads=2, intermediate_size=40)


def _layers(family: str):
    torch.manual_seed(0)
    model = BertModel(BertConfig(**KW)) if family == "bert" else RobertaModel(RobertaConfig(**KW))
    return model.eval().encoder.layer


def _nested_plan(counts: list[int]) -> torch.Tensor:
    """(L + 1, 1, T) hard plan keeping ``counts[l]`` tokens at set ``l``, CLS first, the rest at random."""
    rank = torch.cat((torch.zeros(1, dtype=torch.long), 1 + torch.randperm(LENGTH - 1)))
    return torch.stack([(rank < c).float() for c in counts])[:, None]


def _counted(fn, x) -> float:
    return fvcore_flops(fn, (x,))


@pytest.fixture(params=["bert", "roberta"])
def layers(request):
    return _layers(request.param)


def test_dense_encoder(layers):
    x, valid = torch.randn(1, LENGTH, 16), torch.ones(1, LENGTH, dtype=torch.bool)
    counts = torch.full((DEPTH + 1, 1), float(LENGTH))
    analytic = encoder_flops(BertAdapter(layers), counts).total
    assert analytic == pytest.approx(_counted(lambda t: run_dense(layers, t, valid).hidden, x), rel=1e-9)


def test_planned_pruned_encoder(layers):
    torch.manual_seed(1)
    plan = _nested_plan([LENGTH, 8, 5, 3])
    x = torch.randn(1, LENGTH, 16)
    out = run_planned_pruned(layers, x, plan)
    analytic = encoder_flops(BertAdapter(layers), out.counts).total
    assert analytic == pytest.approx(_counted(lambda t: run_planned_pruned(layers, t, plan).hidden, x), rel=1e-9)
    dense = encoder_flops(BertAdapter(layers), torch.full((DEPTH + 1, 1), float(LENGTH))).total
    assert analytic < dense


@pytest.mark.parametrize("pruner", ["threshold", "topk"])
def test_online_pruned_encoder_counts_the_dropped_queries(layers, pruner):
    torch.manual_seed(2)
    x, valid = torch.randn(1, LENGTH, 16), torch.ones(1, LENGTH, dtype=torch.bool)
    rule = ThresholdPruner(DEPTH, 0.6, scoring_mode="mean_norm") if pruner == "threshold" else TopKPruner(DEPTH, 0.3)
    if pruner == "topk":
        rule.rates = [1.0, 0.6, 0.3]  # the default schedule keeps the first 3 layers whole
    lengths = valid.sum(-1)

    def decide(layer, probs, live):
        return rule.decide(layer, probs, live, lengths, soft=False)

    out = run_online_pruned(layers, x, valid, decide)
    assert float(out.counts[-1]) < LENGTH  # something was pruned
    analytic = encoder_flops(BertAdapter(layers), out.counts, online=True).total
    counted = _counted(lambda t: run_online_pruned(layers, t, valid, decide).hidden, x)
    # fvcore also counts the decisions' own sums (the attention each token receives, H n^2 per layer),
    # which the analytic count leaves out, as it leaves out planning on images (under 1 %)
    assert analytic <= counted <= analytic * 1.01
    assert analytic > encoder_flops(BertAdapter(layers), out.counts).total  # the dropped queries' scores


@pytest.mark.parametrize("kind", ["logits", "probs"])
def test_planning_pass(layers, kind):
    """The scout's pass stops at the last layer's scores: Q, K and the scores there, nothing after. The
    probs form leaves the scores to back-tracking (only the rows it reads); the test computes them all,
    as the analytic count charges them (an upper bound there). fvcore's trace drops results nothing
    uses, so work computed and thrown away is checked by tests/test_ltp_flops.py, which counts the
    eager run."""
    x, valid = torch.randn(1, LENGTH, 16), torch.ones(1, LENGTH, dtype=torch.bool)
    counts = torch.full((DEPTH + 1, 1), float(LENGTH))
    analytic = encoder_flops(BertAdapter(layers), counts, last_attn_scores_only=True).total

    def plan_pass(t):
        seen = planning_attention(layers, t, valid, kind)
        if kind == "logits":
            return seen[-1]
        return seen.queries[-1] @ seen.keys[-1].transpose(-2, -1)  # the scores the probs view reads

    assert analytic == pytest.approx(_counted(plan_pass, x), rel=1e-9)
