"""The loss of each stage as a module, ``task(images, targets) -> (loss, metrics)``, so that one
DistributedDataParallel wrapper covers whatever a stage trains.

* :class:`Classification`: the dense teacher, cross-entropy on (mixed) soft targets;
* :class:`Distillation`: the scout against the frozen teacher (section 3.1);
* :class:`ConcreteFineTuning`: soft concrete masks, cross-entropy + regularisers + KD (section 3.5);
* :class:`DenseFineTuning`: its control, the same loss without masks (cross-entropy + KD).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..approx import ApproxNet, ScoutStudent, distillation_loss
from ..executors import forward_masked
from ..wrap import STTABT


def soft_target_loss(logits: torch.Tensor, targets: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Cross-entropy for Mixup's soft targets (timm's ``SoftTargetCrossEntropy``) or, when targets
    are class indices, with label smoothing."""
    from timm.loss import SoftTargetCrossEntropy

    if targets.dim() == logits.dim():
        return SoftTargetCrossEntropy()(logits, targets)
    return F.cross_entropy(logits, targets, label_smoothing=smoothing)


def logit_kd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between class distributions, mean over the batch."""
    return F.kl_div(student.float().log_softmax(-1), teacher.float().log_softmax(-1), log_target=True,
                    reduction="batchmean")


class _FrozenTeacher(nn.Module):
    """Keeps ``teacher`` in eval mode with no gradients whatever mode the task is put in."""

    def __init__(self, teacher: nn.Module):
        super().__init__()
        self.teacher = teacher.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self


class Classification(nn.Module):
    def __init__(self, model: nn.Module, smoothing: float = 0.0):
        super().__init__()
        self.model, self.smoothing = model, smoothing

    def forward(self, images, targets):
        loss = soft_target_loss(self.model(images), targets, self.smoothing)
        return loss, {"loss": loss}


class Distillation(_FrozenTeacher):
    """``L_att + 0.01 L_hid + L_emb + L_pred`` of the scout against the dense host.

    ``student`` (train it: ``fit(..., trained=task.student)``) is the planning scout plus the parts
    only these losses use (its last block's output path, head, ``hidden_proj``), interpolated from
    the teacher; training it trains ``scout`` in place."""

    def __init__(self, teacher: nn.Module, scout: ApproxNet):
        super().__init__(teacher)
        self.student = ScoutStudent(scout, teacher)

    def forward(self, images, targets):
        with torch.no_grad():
            teacher = forward_masked(self.teacher, images, record=True, attention="logits")
        losses = distillation_loss(self.student(images, attention="logits"), teacher, self.student.hidden_proj)
        return losses.total, {"loss": losses.total, "attention_kl": losses.attention, "hidden": losses.hidden,
                              "embedding": losses.embedding, "prediction": losses.prediction}


class ConcreteFineTuning(_FrozenTeacher):
    """Section 3.5: ``CE + 1e-3 sum_l (p_l - v)^2 + lambda (sigmoid(v) - mean m~)^2 + kd KL(t || s)``
    with soft masks on the masked executor. The gradient reaches host, p-logits and scout: the scout
    is fine-tuned jointly, through the masks it shapes (no distillation term in this stage)."""

    def __init__(self, model: STTABT, teacher: nn.Module, *, smoothing: float = 0.0, kd_weight: float = 0.5):
        super().__init__(teacher)
        self.model, self.smoothing, self.kd_weight = model, smoothing, kd_weight

    def forward(self, images, targets):
        out = self.model.forward_detailed(images, hard=False, executor="masked")
        ce = soft_target_loss(out.logits, targets, self.smoothing)
        regulariser = self.model.pruner.regulariser(out.masks)
        with torch.no_grad():
            teacher = self.teacher(images)
        kd = logit_kd(out.logits, teacher)
        loss = ce + regulariser + self.kd_weight * kd
        keep = out.masks[:-1].detach().mean()
        return loss, {"loss": loss, "ce": ce, "regulariser": regulariser, "kd": kd, "soft_keep": keep}


class DenseFineTuning(_FrozenTeacher):
    """The control of :class:`ConcreteFineTuning`: the dense host fine-tuned with the same
    ``CE + kd KL(t || s)`` and no masks (so no regularisers), to tell what the masks cost from what
    the extra epochs give."""

    def __init__(self, model: nn.Module, teacher: nn.Module, *, smoothing: float = 0.0, kd_weight: float = 0.5):
        super().__init__(teacher)
        self.model, self.smoothing, self.kd_weight = model, smoothing, kd_weight

    def forward(self, images, targets):
        logits = self.model(images)
        ce = soft_target_loss(logits, targets, self.smoothing)
        with torch.no_grad():
            teacher = self.teacher(images)
        kd = logit_kd(logits, teacher)
        loss = ce + self.kd_weight * kd
        return loss, {"loss": loss, "ce": ce, "kd": kd}
