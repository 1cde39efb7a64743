"""Text FLOPs: the planning pass is counted as it runs, checked against torch's own FLOP counter."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEncoder

from ltp_nlp.approx import planning_attention
from ltp_nlp.flops import dense_macs, planning_macs


@pytest.mark.parametrize("length", [5, 12])
def test_planning_pass_macs_equal_what_runs(length):
    config = BertConfig(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=40)
    encoder = BertEncoder(config).eval()
    x = torch.randn(1, length, 16)
    valid = torch.ones(1, length, dtype=torch.bool)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        attention = planning_attention(encoder.layer, x, valid, "logits")
        attention[len(attention) - 1]  # the last layer's scores: made when the planner reads them
    counted = counter.get_total_flops() / 2                       # torch counts 2 FLOPs per multiply-add
    expected = float(planning_macs(16, 40, 3, torch.tensor([length]))[0])
    assert counted == expected
    assert expected < float(dense_macs(16, 40, 3, torch.tensor([length]))[0])  # no last FFN, no attention output
