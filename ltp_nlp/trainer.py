"""``LTPTrainer``: transformers' ``Trainer`` for the LTP stages (soft thresholds, then hard) and STTABT's
concrete stage on text.

* Two optimisers. The model's (the ``--optim`` of :class:`LTPTrainingArguments`, AdamW by default) takes
  every parameter except the pruner's (LTP ``threshold_delta``, STTABT ``p_logits``), with the usual
  no-decay group (biases, LayerNorm); the *threshold optimiser* (AdamW, ``lr_threshold``, no weight
  decay, its own linear schedule) takes the pruner's. It steps every time the main one does
  (``on_optimizer_step``) and is saved in every checkpoint as ``threshold_optimizer.pt`` and
  ``threshold_scheduler.pt`` beside ``optimizer.pt``, so ``resume_from_checkpoint`` restores it.
  In hard mode the pruner is frozen (``requires_grad=False``) and there is no threshold optimiser.
* Loss: task loss + ``lambda_threshold * sum_l mean(mask_l)`` (LTP, soft) or + the concrete
  regulariser as the model returns it (``sttabt_concrete``, soft: already weighted). Training logs
  add ``task_loss``, ``pruning_loss`` (unweighted), ``regulariser`` (what was added), ``kept_mean``
  and, for LTP, ``threshold_layer_{i}``.
* Evaluation: hard masks on the pruned executor (tokens really removed); besides the task metrics of
  :func:`ltp_nlp.metrics.compute_metrics`, ``baseline_gflops``, ``gflops``, ``relative_flops``,
  ``kept_mean`` and ``kept_layer_{i}`` (and ``scout_gflops`` for modes with a scout) from a
  :class:`ltp_nlp.flops.FlopsMeter`. They reach the Trainer's logs, hence TensorBoard.

Single-process CPU / GPU training in fp32 or bf16 (the FLOPs meter counts this process's examples).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments, get_scheduler
from transformers.integrations import TensorBoardCallback
from transformers.integrations.integration_utils import default_logdir
from transformers.trainer_utils import EvalPrediction
from transformers.utils import logging

from .configuration_ltp import SCOUT_MODES, SOFT_MODES
from .flops import FlopsMeter
from .glue import task_spec
from .metrics import best_metric_name, compute_metrics
from .modeling_ltp import MASKING_MODES
from .pruners import DEFAULT_TEMPERATURE, ThresholdPruner

logger = logging.get_logger(__name__)

THRESHOLD_OPTIMIZER_NAME = "threshold_optimizer.pt"
THRESHOLD_SCHEDULER_NAME = "threshold_scheduler.pt"
THRESHOLD_SCHEDULE = "linear"
EVAL_EXECUTOR = "pruned"   # evaluation removes the pruned tokens for real
# How the model's soft-mode ``pruning_loss`` enters the loss: times ``lambda_threshold`` (LTP returns
# the unweighted sum of mask means) or as it is (the concrete regulariser carries its own weight).
WEIGHTED_BY_LAMBDA = "lambda_threshold"
REGULARISER_WEIGHTS = {"absolute_threshold": WEIGHTED_BY_LAMBDA, "sttabt_concrete": 1.0}


@dataclass
class LTPTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the pruning stage's knobs. With ``task`` set, ``metric_for_best_model``
    defaults to the task's best metric (accuracy, combined_score or matthews_correlation)."""

    task: str | None = field(default=None, metadata={"help": "GLUE task (SST2, MNLI, ...): metrics and best model"})
    masking_mode: str = field(default="hard", metadata={"help": "soft (learn thresholds) or hard (0/1 masks)"})
    lambda_threshold: float = field(default=0.0, metadata={"help": "weight of the LTP regulariser sum_l mean(mask_l)"})
    temperature: float = field(default=DEFAULT_TEMPERATURE,
                               metadata={"help": "T of the soft masks sigmoid((s - th) / T)"})
    lr_threshold: float | None = field(default=None, metadata={"help": "learning rate of the thresholds "
                                                                       "(default: learning_rate)"})

    def __post_init__(self):
        if self.masking_mode not in MASKING_MODES:
            raise ValueError(f"masking_mode must be one of {', '.join(MASKING_MODES)}, got {self.masking_mode!r}")
        if not (math.isfinite(self.lambda_threshold) and self.lambda_threshold >= 0):
            raise ValueError(f"lambda_threshold must be a finite number >= 0, got {self.lambda_threshold}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0 (1e-4 .. 2e-3 in LTP), got {self.temperature}")
        if self.lr_threshold is not None and not (math.isfinite(self.lr_threshold) and self.lr_threshold >= 0):
            raise ValueError(f"lr_threshold must be a finite number >= 0 (or None: learning_rate), "
                             f"got {self.lr_threshold}")
        if self.task is not None:
            self.task = task_spec(self.task).name
            if self.metric_for_best_model is None:
                self.metric_for_best_model = best_metric_name(self.task)
        super().__post_init__()

    @property
    def threshold_learning_rate(self) -> float:
        return self.learning_rate if self.lr_threshold is None else self.lr_threshold


def glue_metrics(task: str) -> Callable[[EvalPrediction], dict[str, float]]:
    """A Trainer ``compute_metrics`` for a GLUE task (see :func:`ltp_nlp.metrics.compute_metrics`)."""
    name = task_spec(task).name

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        return compute_metrics(name, prediction.predictions, prediction.label_ids)

    return compute


def flops_metrics(summary: dict) -> dict[str, float]:
    """A :meth:`FlopsMeter.summary` flattened for the logs: ``kept_per_layer`` -> ``kept_layer_{i}``."""
    metrics = {k: v for k, v in summary.items() if k != "kept_per_layer"}
    metrics.update({f"kept_layer_{i}": kept for i, kept in enumerate(summary["kept_per_layer"])})
    return metrics


def flops_meter(config) -> FlopsMeter:
    """An empty meter for an LTP model's configuration (with the scout's widths for STTABT scout modes)."""
    hidden, intermediate, depth = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    if config.prune_mode in SCOUT_MODES:
        factor = config.approx_factor
        return FlopsMeter(hidden, intermediate, depth, hidden // factor, intermediate // factor)
    return FlopsMeter(hidden, intermediate, depth)


class _StepThresholds(TrainerCallback):
    """Steps the threshold optimiser right after every step of the main one."""

    def __init__(self, trainer: "LTPTrainer"):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.trainer.step_thresholds()


class LTPTrainer(Trainer):
    """``Trainer`` for :class:`ltp_nlp.LTPForSequenceClassification` (see the module docstring).

    ``compute_metrics`` defaults to the GLUE metrics of ``args.task``.
    """

    def __init__(self, model: nn.Module | None = None, args: LTPTrainingArguments | None = None, **kwargs):
        if not isinstance(args, LTPTrainingArguments):
            raise TypeError("LTPTrainer needs LTPTrainingArguments (masking_mode, lambda_threshold, temperature, ...), "
                            f"got {type(args).__name__}")
        if not hasattr(model, "ltp"):
            raise TypeError(f"LTPTrainer trains ltp_nlp models (LTPForSequenceClassification), got "
                            f"{type(model).__name__}; fine-tune a plain host with transformers.Trainer "
                            "(tools/run_glue.py)")
        if kwargs.get("compute_metrics") is None and args.task is not None:
            kwargs["compute_metrics"] = glue_metrics(args.task)
        super().__init__(model=model, args=args, **kwargs)
        # compute_loss returns a per-batch mean: let the Trainer divide it for gradient accumulation
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self.threshold_optimizer: torch.optim.Optimizer | None = None
        self.threshold_scheduler = None
        self._train_sums: dict[str, torch.Tensor] = {}
        self._train_batches = 0
        self._meter: FlopsMeter | None = None
        self._configure_pruner()
        self.add_callback(_StepThresholds(self))
        _log_tensorboard_under(self, args.output_dir)

    # ---- the pruner's parameters -----------------------------------------------------------------

    @property
    def prune_mode(self) -> str:
        return self.model.config.prune_mode

    @property
    def soft(self) -> bool:
        return self.args.masking_mode == "soft"

    def pruner_parameters(self) -> list[nn.Parameter]:
        """The learnable parameters of the pruner (LTP threshold deltas, STTABT p-logits); may be empty."""
        pruner = self.model.ltp.pruner
        return [] if pruner is None else list(pruner.parameters())

    def _configure_pruner(self) -> None:
        if self.soft and self.prune_mode not in SOFT_MODES:
            raise ValueError(f"prune_mode {self.prune_mode!r} cannot train with masking_mode='soft' (only "
                             f"{', '.join(SOFT_MODES)} have soft masks): use masking_mode='hard'")
        params = self.pruner_parameters()
        for param in params:
            param.requires_grad_(self.soft)  # hard stage: the learned thresholds are frozen
        if self.soft and params and self.args.fp16:
            raise ValueError("fp16 loss scaling does not cover the separate threshold optimiser: train the soft "
                             "stage in fp32 or bf16")
        if self.soft and self.prune_mode == "absolute_threshold" and self.args.lambda_threshold == 0:
            logger.warning("lambda_threshold is 0: the thresholds learn from the task loss only and will "
                           "hardly prune; LTP uses 0.01 .. 0.2")

    @property
    def regulariser_weight(self) -> float:
        weight = REGULARISER_WEIGHTS.get(self.prune_mode, 0.0)
        return self.args.lambda_threshold if weight == WEIGHTED_BY_LAMBDA else float(weight)

    # ---- optimisers ------------------------------------------------------------------------------

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The model's optimiser over every trainable parameter except the pruner's, and the threshold
        optimiser over the pruner's (soft stage only)."""
        opt_model = self.model if model is None else model
        pruner_ids = {id(p) for p in self.pruner_parameters()}
        if self.optimizer is None:
            decay = set(self.get_decay_parameter_names(opt_model))
            named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad and id(p) not in pruner_ids]
            groups = [
                {"params": [p for n, p in named if n in decay], "weight_decay": self.args.weight_decay},
                {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
            ]
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            if not (isinstance(optimizer_cls, type) and issubclass(optimizer_cls, torch.optim.Optimizer)) or \
                    {"params", "model", "optimizer_dict"} & set(optimizer_kwargs):
                raise ValueError(f"LTPTrainer supports plain torch optimisers (optim='adamw_torch', 'sgd', ...), "
                                 f"not {self.args.optim!r}")
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        if self.threshold_optimizer is None and self.soft:
            params = [p for p in self.pruner_parameters() if p.requires_grad]
            if params:
                self.threshold_optimizer = torch.optim.AdamW(
                    params, lr=self.args.threshold_learning_rate, betas=(self.args.adam_beta1, self.args.adam_beta2),
                    eps=self.args.adam_epsilon, weight_decay=0.0)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        created = self.lr_scheduler is None
        scheduler = super().create_scheduler(num_training_steps, optimizer)
        if self.threshold_optimizer is not None and (created or self.threshold_scheduler is None):
            self.threshold_scheduler = get_scheduler(
                THRESHOLD_SCHEDULE, self.threshold_optimizer,
                num_warmup_steps=self.args.get_warmup_steps(num_training_steps), num_training_steps=num_training_steps)
        return scheduler

    def step_thresholds(self) -> None:
        """One step of the threshold optimiser and its schedule (called after each main step)."""
        if self.threshold_optimizer is None or self.accelerator.optimizer_step_was_skipped:
            return
        self.threshold_optimizer.step()
        self.threshold_scheduler.step()

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        super()._save_optimizer_and_scheduler(output_dir)
        if self.threshold_optimizer is not None and self.args.should_save:
            torch.save(self.threshold_optimizer.state_dict(), os.path.join(output_dir, THRESHOLD_OPTIMIZER_NAME))
            torch.save(self.threshold_scheduler.state_dict(), os.path.join(output_dir, THRESHOLD_SCHEDULER_NAME))

    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None or self.threshold_optimizer is None:
            return
        optimizer_file = os.path.join(checkpoint, THRESHOLD_OPTIMIZER_NAME)
        scheduler_file = os.path.join(checkpoint, THRESHOLD_SCHEDULER_NAME)
        if not os.path.isfile(optimizer_file):
            logger.warning(f"{checkpoint} has no {THRESHOLD_OPTIMIZER_NAME} (saved by another stage?): the threshold "
                           "optimiser starts afresh")
            return
        self.threshold_optimizer.load_state_dict(torch.load(optimizer_file, map_location="cpu", weights_only=True))
        if os.path.isfile(scheduler_file):
            self.threshold_scheduler.load_state_dict(torch.load(scheduler_file, weights_only=True))

    # ---- training --------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs, masking_mode=self.args.masking_mode, temperature=self.args.temperature)
        if outputs.loss is None:
            raise ValueError("the batch has no 'labels': LTPTrainer trains on labelled data (tokenize_glue gives them)")
        loss = outputs.loss
        regulariser = None
        if self.soft and outputs.pruning_loss is not None:
            regulariser = self.regulariser_weight * outputs.pruning_loss
            loss = loss + regulariser
        if model.training:
            self._record(outputs, regulariser, inputs)
        return (loss, outputs) if return_outputs else loss

    def _record(self, outputs, regulariser, inputs) -> None:
        """Adds this batch's losses and kept share (tokens entering each layer / real length, averaged over
        layers and examples, as the FLOPs meter counts it; expected counts under soft masks)."""
        values = {"task_loss": outputs.loss}
        if outputs.pruning_loss is not None:
            values["pruning_loss"] = outputs.pruning_loss
        if regulariser is not None:
            values["regulariser"] = regulariser
        if outputs.counts is not None:
            values["kept_mean"] = (outputs.counts[:-1] / _lengths(inputs).to(outputs.counts)).mean()
        for key, value in values.items():
            value = value.detach().float()
            self._train_sums[key] = self._train_sums.get(key, 0) + value
        self._train_batches += 1

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Training logs (those with ``loss``) get the means since the last log of what ``_record`` saw."""
        if "loss" in logs and self._train_batches:
            logs.update({k: float(v) / self._train_batches for k, v in self._train_sums.items()})
            self._train_sums, self._train_batches = {}, 0
            pruner = self.model.ltp.pruner
            if isinstance(pruner, ThresholdPruner):
                logs.update({f"threshold_layer_{i}": t for i, t in enumerate(pruner.thresholds().tolist())})
        super().log(logs, start_time)

    # ---- evaluation ------------------------------------------------------------------------------

    def evaluation_loop(self, dataloader, description, prediction_loss_only=None, ignore_keys=None,
                        metric_key_prefix="eval"):
        self._meter = flops_meter(self.model.config)
        try:
            output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys,
                                             metric_key_prefix)
            summary = flops_metrics(self._meter.summary())
        finally:
            self._meter = None
        if self.model.config.prune_mode not in SCOUT_MODES:
            summary.pop("scout_gflops")
        output.metrics.update({f"{metric_key_prefix}_{k}": v for k, v in summary.items()})
        return output

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Hard masks on the pruned executor; the token counts go to the FLOPs meter."""
        inputs = self._prepare_inputs(inputs)
        labels = inputs.get("labels")
        with torch.no_grad():
            outputs = model(**inputs, masking_mode="hard", executor=EVAL_EXECUTOR)
        if self._meter is not None:
            self._meter.update(outputs.counts, _lengths(inputs))
        loss = outputs.loss.detach() if outputs.loss is not None else None
        if prediction_loss_only:
            return loss, None, None
        return loss, outputs.logits.detach(), labels


def _lengths(inputs: dict) -> torch.Tensor:
    """(B,) real lengths of a batch (the whole width when there is no attention mask)."""
    if inputs.get("attention_mask") is not None:
        return inputs["attention_mask"].sum(-1)
    ids = inputs["input_ids"]
    return torch.full(ids.shape[:1], ids.shape[1], device=ids.device)


def _log_tensorboard_under(trainer: Trainer, output_dir: str) -> None:
    """TensorBoard logs in ``output_dir/runs/<date>`` also when ``evaluate`` runs before (or without)
    ``train`` (transformers would otherwise write them to ``./runs`` in the working directory)."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = os.path.join(output_dir, default_logdir())
