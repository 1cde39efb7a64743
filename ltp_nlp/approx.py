"""The STTABT approximation network for text: a thin copy of the host encoder (same depth and heads,
hidden and intermediate widths divided by ``factor``, its own thin embeddings), initialised from the
teacher by linear interpolation of every tensor, distilled per task with
``L_att + 1 * L_hid + L_emb + L_pred`` (hidden weight 1 for text; :func:`sttabt.approx.distillation_loss`).
"""
from __future__ import annotations

import torch
from torch import nn

from sttabt.approx import resize_linear
from sttabt.executors import HostOutput

from .executors import run_dense
from .host import SEQUENCE_CLASSIFIERS, embed

HIDDEN_WEIGHT_TEXT = 1.0  # weight of L_hid for text (0.01 for images)


def classify(host_type: str, modules: nn.Module, sequence: torch.Tensor) -> torch.Tensor:
    """The host's own classification head on (B, n, D) tokens (it reads the first one, CLS)."""
    if host_type == "bert":
        return modules.classifier(modules.dropout(modules.bert.pooler(sequence)))
    return modules.classifier(sequence)


def thin_config(host_config, factor: int):
    hidden, heads = host_config.hidden_size, host_config.num_attention_heads
    if hidden % factor or (hidden // factor) % heads:
        raise ValueError(f"approx_factor {factor} does not split hidden size {hidden} into {heads} heads; "
                         "choose another factor")
    thin = host_config.__class__(**host_config.to_dict())
    thin.hidden_size = hidden // factor
    thin.intermediate_size = host_config.intermediate_size // factor
    return thin


class TextScout(nn.Module):
    """Thin copy of a BERT-family classifier; ``forward`` returns a recorded
    :class:`sttabt.executors.HostOutput` (attention logits, hidden states, class logits)."""

    def __init__(self, host_type: str, host_config, factor: int):
        super().__init__()
        self.host_type = host_type
        self.net = SEQUENCE_CLASSIFIERS[host_type](thin_config(host_config, factor))
        self.hidden_proj = nn.Linear(host_config.hidden_size // factor, host_config.hidden_size)

    @property
    def base(self) -> nn.Module:
        return getattr(self.net, self.net.base_model_prefix)

    @torch.no_grad()
    def reset_from(self, teacher: nn.Module) -> None:
        """Interpolated init from the teacher (a sequence classifier of the same host type)."""
        source = teacher.state_dict()
        for name, target in self.net.state_dict().items():
            src = source[name]
            target.copy_(resize_linear(src, target.shape) if target.is_floating_point() else src)

    def forward(self, input_ids, attention_mask, token_type_ids=None) -> HostOutput:
        valid = attention_mask.bool()
        x = embed(self.base.embeddings, input_ids, token_type_ids)
        out = run_dense(self.base.encoder.layer, x, valid, record=True)
        return HostOutput(classify(self.host_type, self.net, out.hidden), out.attention, out.hidden_states)
