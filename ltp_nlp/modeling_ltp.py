"""``LTPModel`` and ``LTPForSequenceClassification``: a BERT, RoBERTa or I-BERT host under a pruner.

The host's own transformers modules are adopted as they are (``bert.embeddings``, ``bert.encoder``,
``classifier``, ...), so an LTP checkpoint's weights keep the host's names and a fine-tuned host
checkpoint loads with no missing or unexpected weights. The pruner's parameters (LTP threshold
deltas, STTABT p-logits) and the STTABT scout live under ``<prefix>.pruner`` and ``<prefix>.scout``;
a dense checkpoint does not have them and they start at their defined initial values.

``forward(..., masking_mode=None, executor=None)``, both explicit:
* ``masking_mode``: ``"soft"`` (LTP / concrete training stage) or ``"hard"`` (0/1 masks); default soft
  in train mode for the modes that have one, hard otherwise;
* ``executor``: ``"masked"`` (dense shapes; training, and the reference) or ``"pruned"`` (tokens really
  removed, batched; inference); default pruned for hard masks in eval mode.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.models.ibert.quant_modules import QuantEmbedding, QuantLinear
from transformers.utils import ModelOutput

from sttabt.executors import HostOutput
from sttabt.pruners import BacktrackPruner, ConcretePruner, keep_ratio_per_layer

from .approx import TextScout, classify, planning_attention
from .configuration_ltp import (HOST_TYPES, ONLINE_MODES, PLANNED_MODES, PRUNE_MODES, SCOUT_MODES, SOFT_MODES,
                                LTPConfig)
from .executors import (EncoderOutput, run_dense, run_online_masked, run_online_pruned, run_planned_masked,
                        run_planned_pruned)
from .host import PREFIXES, SEQUENCE_CLASSIFIERS, check_layers, embed
from .ltp import mask_means, threshold_base
from .pruners import DEFAULT_TEMPERATURE, ThresholdPruner, TopKPruner

KEEP_LAMBDA_TEXT = 1e-3  # lambda of the concrete keep-ratio regulariser for text (100 for images)
MASKING_MODES = ("soft", "hard")
EXECUTORS = ("masked", "pruned")


def create_text_pruner(config: LTPConfig, depth: int) -> nn.Module | None:
    mode = config.prune_mode
    if mode == "absolute_threshold":
        return ThresholdPruner(depth, config.final_token_threshold, config.scoring_mode, config.score_length)
    if mode == "topk":
        return TopKPruner(depth, config.token_keep_rate)
    if mode == "sttabt_concrete":
        return ConcretePruner(depth, config.p_logit, keep_lambda=KEEP_LAMBDA_TEXT)
    if mode in ("sttabt_abt", "sttabt_abt_oracle"):
        return BacktrackPruner(depth, config.token_keep_rate, source="approx" if mode == "sttabt_abt" else "actual")
    return None


def infer_host_type(path: str | os.PathLike) -> str:
    """The host of a checkpoint folder, read from its weight names (``bert.``, ``roberta.``, ``ibert.``)."""
    names = weight_names(path)
    for host_type in HOST_TYPES:
        if any(name.startswith(PREFIXES[host_type] + ".") for name in names):
            return host_type
    raise ValueError(f"cannot tell the host of {path} from its weights (no key starts with "
                     f"{', '.join(p + '.' for p in PREFIXES.values())}); set \"host_type\" in its config.json")


WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")  # sharded checkpoints


def weight_names(path) -> list[str]:
    """The weight names of a ``save_pretrained`` folder, read without loading the weights: from
    ``model.safetensors``'s header, ``pytorch_model.bin`` (memory-mapped) or a sharded checkpoint's index."""
    path = os.fspath(path)
    st = os.path.join(path, "model.safetensors")
    if os.path.exists(st):
        from safetensors import safe_open

        with safe_open(st, "pt") as f:
            return list(f.keys())
    binary = os.path.join(path, "pytorch_model.bin")
    if os.path.exists(binary):
        return list(torch.load(binary, map_location="cpu", weights_only=True, mmap=True))
    for index in WEIGHT_INDEXES:
        if os.path.exists(os.path.join(path, index)):
            with open(os.path.join(path, index), encoding="utf-8") as f:
                return list(json.load(f)["weight_map"])
    raise FileNotFoundError(f"no model.safetensors, pytorch_model.bin or sharded index ({', '.join(WEIGHT_INDEXES)}) "
                            f"in {path}")


@dataclass
class LTPModelOutput(ModelOutput):
    """``counts`` (L + 1, B): tokens entering each layer, then kept after the last (soft: expected).
    ``mask_means`` (L,): mean keep mask per layer over real tokens (differentiable in soft mode).
    ``pruning_loss``: the pruner's regulariser in soft mode: LTP ``sum_l mean(mask_l)`` over layers
    ``1 .. L-1`` (layer 0 is skipped; the trainer weighs it by lambda) or STTABT's concrete regulariser
    (already weighted)."""

    last_hidden_state: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    mask_means: torch.Tensor | None = None
    pruning_loss: torch.Tensor | None = None
    plan: torch.Tensor | None = None


@dataclass
class LTPSequenceClassifierOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    mask_means: torch.Tensor | None = None
    pruning_loss: torch.Tensor | None = None
    plan: torch.Tensor | None = None


class LTPPreTrainedModel(PreTrainedModel):
    config_class = LTPConfig
    base_model_prefix = "ltp"  # unused: weights keep the host's own prefix (bert., roberta., ibert.)
    _keys_to_ignore_on_load_missing = [r"\.pruner\.", r"\.scout\."]
    accepts_loss_kwargs = False  # the loss is a plain mean: Trainer must scale it for accumulation

    def _init_weights(self, module):
        if isinstance(module, ThresholdPruner):
            depth = module.threshold_delta.numel()
            module.threshold_base = torch.tensor(threshold_base(self.config.final_token_threshold, depth),
                                                 device=module.threshold_delta.device)
            if not getattr(module.threshold_delta, "_is_hf_initialized", False):  # not loaded from a checkpoint
                module.threshold_delta.data.zero_()
        elif isinstance(module, ConcretePruner):
            module.p_logits.data.fill_(module.target_p_logit)
        elif not isinstance(module, (BacktrackPruner, TopKPruner)):
            super()._init_weights(module)
            _init_host_extras(module, self.config.initializer_range)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        """As transformers' ``from_pretrained``; the host type of a hand-edited config is read from the
        weight names, and any missing (host) or unexpected weight is an error listing them."""
        init_scout = kwargs.pop("init_scout", None)
        if config is None:
            config, kwargs = LTPConfig.from_pretrained(pretrained_model_name_or_path, return_unused_kwargs=True,
                                                       **kwargs)
            config.validate_pruning()
        if config.host_type is None:
            config.host_type = infer_host_type(pretrained_model_name_or_path)
            config.fill_host_defaults()
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, config=config,
                                              output_loading_info=True, **kwargs)
        if config.prune_mode in SCOUT_MODES and not any(".scout." in k for k in weight_names(pretrained_model_name_or_path)):
            if init_scout != "interpolate":
                raise ValueError(f"{pretrained_model_name_or_path} has no approximation network (scout) for prune_mode "
                                 f"{config.prune_mode!r}: distil one with tools/distill_scout_glue.py, or pass "
                                 "init_scout='interpolate' to start it from the host by interpolation")
            model.base_model_ltp.scout.reset_from(model)
        saved_mode = LTPConfig.get_config_dict(pretrained_model_name_or_path)[0].get("prune_mode", "none")
        if saved_mode != config.prune_mode:  # another pruner: the saved one's parameters are not used
            info["unexpected_keys"] = [k for k in info["unexpected_keys"] if ".pruner." not in k and ".scout." not in k]
        problems = {k: sorted(v) for k, v in info.items() if k in ("missing_keys", "unexpected_keys") and v}
        if problems:
            lines = [f"{kind.replace('_', ' ')}: {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
                     for kind, keys in problems.items()]
            raise ValueError(f"{pretrained_model_name_or_path} does not match a {config.host_type} LTP model "
                             f"({cls.__name__}):\n  " + "\n  ".join(lines) +
                             "\nIs it a checkpoint of another architecture? Check host_type and the layer sizes.")
        return (model, info) if want_info else model


@torch.no_grad()
def _init_host_extras(module: nn.Module, std: float) -> None:
    """What the hosts' own ``_init_weights`` add to the generic rule: I-BERT's quantised layers and the
    embeddings' index buffers (which a checkpoint does not hold)."""
    if isinstance(module, (QuantLinear, QuantEmbedding)):
        module.weight.normal_(0.0, std)
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()
    if isinstance(getattr(module, "position_ids", None), torch.Tensor):
        module.position_ids.copy_(torch.arange(module.position_ids.shape[-1]).expand_as(module.position_ids))
    if isinstance(getattr(module, "token_type_ids", None), torch.Tensor):
        module.token_type_ids.zero_()


class LTPModel(LTPPreTrainedModel):
    """The host encoder under the configured pruner; returns the last tokens and what was kept."""

    @property
    def base_model_ltp(self) -> "LTPModel":
        return self

    def __init__(self, config: LTPConfig, host_base: nn.Module | None = None):
        super().__init__(config)
        if host_base is None:
            host = SEQUENCE_CLASSIFIERS[_host_type(config)](config.host_config())
            host_base = getattr(host, host.base_model_prefix)
        self.embeddings = host_base.embeddings
        self.encoder = host_base.encoder
        if getattr(host_base, "pooler", None) is not None:
            self.pooler = host_base.pooler
        check_layers(self.encoder.layer)
        self.pruner = create_text_pruner(config, len(self.encoder.layer))
        if config.prune_mode in SCOUT_MODES:
            self.scout = TextScout(config.host_type, config.host_config(), config.approx_factor)
        self.post_init()

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.layer

    def resolve_modes(self, masking_mode: str | None, executor: str | None) -> tuple[bool, str]:
        """(soft, executor) from the explicit arguments and their defaults; clear errors otherwise."""
        mode = self.config.prune_mode
        if masking_mode is None:
            masking_mode = "soft" if self.training and mode in SOFT_MODES else "hard"
        if masking_mode not in MASKING_MODES:
            raise ValueError(f"masking_mode must be 'soft' or 'hard', got {masking_mode!r}")
        soft = masking_mode == "soft"
        if soft and mode not in SOFT_MODES:
            raise ValueError(f"prune_mode {mode!r} cannot use masking_mode='soft' (only "
                             f"{', '.join(SOFT_MODES)} have soft masks); use masking_mode='hard'")
        if executor is None:
            executor = "pruned" if not soft and not torch.is_grad_enabled() else "masked"
        if executor not in EXECUTORS:
            raise ValueError(f"executor must be 'masked' or 'pruned', got {executor!r}")
        if executor == "pruned" and soft:
            raise ValueError("the pruned executor needs hard masks: use masking_mode='hard' or executor='masked'")
        return soft, executor

    def planning_attention(self, input_ids, valid, token_type_ids=None):
        """What an STTABT pruner plans from: every layer's attention in the pruner's form, from the scout
        (for the oracle, from the host itself)."""
        kind = self.pruner.attention
        if self.config.prune_mode == "sttabt_abt_oracle":
            return planning_attention(self.layers, embed(self.embeddings, input_ids, token_type_ids), valid, kind)
        return self.scout.plan_attention(input_ids, valid, token_type_ids, kind=kind)

    def plan(self, input_ids, valid, token_type_ids=None, *, hard: bool) -> torch.Tensor:
        """The STTABT plan (L + 1, B, T) from :meth:`planning_attention`."""
        attention = self.planning_attention(input_ids, valid, token_type_ids)
        return self.pruner.plan(attention, hard=hard, budget="per_sample", valid=valid)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, *, masking_mode: str | None = None,
                executor: str | None = None, temperature: float = DEFAULT_TEMPERATURE) -> LTPModelOutput:
        if input_ids is None:
            raise ValueError("input_ids are required")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        valid = attention_mask.bool()
        soft, executor = self.resolve_modes(masking_mode, executor)
        mode = self.config.prune_mode
        x = embed(self.embeddings, input_ids, token_type_ids)
        lengths = valid.sum(-1)
        means, loss, plan = None, None, None
        if mode == "none":
            out = run_dense(self.layers, x, valid)
        elif mode in ONLINE_MODES:
            def decide(layer, probs, live):
                return self.pruner.decide(layer, probs, live, lengths, soft=soft, temperature=temperature)

            if executor == "pruned":
                out = run_online_pruned(self.layers, x, valid, decide)
            else:
                out = run_online_masked(self.layers, x, valid, decide, soft=soft)
                means = mask_means(out.masks, valid)
                if soft:
                    pad_to = self.config.score_length if self.config.regularise_padding else None
                    loss = self.pruner.regulariser(out.masks, valid, temperature=temperature, pad_to=pad_to)
        else:
            plan = self.plan(input_ids, valid, token_type_ids, hard=not soft)
            if executor == "pruned":
                out = run_planned_pruned(self.layers, x, plan)
            else:
                out = run_planned_masked(self.layers, x, valid, plan)
            means = keep_ratio_per_layer(plan, valid)
            loss = self.pruner.regulariser(plan, valid) if soft else None
        return LTPModelOutput(out.hidden, out.counts, means, loss, plan)


def _host_type(config: LTPConfig) -> str:
    if config.host_type is None:
        config.host_config()  # raises the explanation
    return config.host_type


class LTPForSequenceClassification(LTPPreTrainedModel):
    """The host's sequence classifier (its own head) on top of :class:`LTPModel`."""

    def __init__(self, config: LTPConfig):
        super().__init__(config)
        host_type = _host_type(config)
        host = SEQUENCE_CLASSIFIERS[host_type](config.host_config())
        self.prefix = PREFIXES[host_type]
        self.add_module(self.prefix, LTPModel(config, getattr(host, host.base_model_prefix)))
        self.classifier = host.classifier
        if hasattr(host, "dropout"):
            self.dropout = host.dropout
        self.num_labels = config.num_labels
        self.post_init()

    @property
    def ltp(self) -> LTPModel:
        return getattr(self, self.prefix)

    base_model_ltp = ltp

    def record(self, input_ids, attention_mask, token_type_ids=None) -> HostOutput:
        """Dense pass recording every layer's attention logits and hidden states, and the logits:
        the teacher side of scout distillation (:func:`sttabt.approx.distillation_loss`)."""
        valid = attention_mask.bool()
        out = run_dense(self.ltp.layers, embed(self.ltp.embeddings, input_ids, token_type_ids), valid, record=True)
        return HostOutput(self.head(out.hidden), out.attention, out.hidden_states)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.config.host_type == "bert":
            return self.classifier(self.dropout(self.ltp.pooler(hidden)))
        return classify(self.config.host_type, self, hidden)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, *,
                masking_mode: str | None = None, executor: str | None = None,
                temperature: float = DEFAULT_TEMPERATURE) -> LTPSequenceClassifierOutput:
        out = self.ltp(input_ids, attention_mask, token_type_ids, masking_mode=masking_mode, executor=executor,
                       temperature=temperature)
        logits = self.head(out.last_hidden_state)
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
            else:
                loss = F.cross_entropy(logits, labels)
        return LTPSequenceClassifierOutput(loss, logits, out.counts, out.mask_means, out.pruning_loss, out.plan)
