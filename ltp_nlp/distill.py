"""Distilling the STTABT scout on text, and the checkpoint handling the GLUE tools share.

Checkpoints (used by ``tools/distill_scout_glue.py``, ``tools/eval_glue.py``, ``tools/benchmark_glue.py``):

* :func:`load_checkpoint` reads a fine-tuned classifier folder, either an LTP checkpoint
  (``model_type: "ltp"``) or a plain host checkpoint (``bert``, ``roberta``, ``ibert``), strictly, with
  its own prune mode; a bare pretrained encoder (no classifier head) is refused, saying what to do;
* :func:`load_fresh_head` reads such a bare encoder for timing only (``tools/benchmark_glue.py``): the
  head is new (seeded), as when ``tools/run_glue.py`` starts fine-tuning, so its scores mean nothing;
* :func:`reconfigure` moves a loaded model to other LTP settings (another prune mode, keep rate,
  threshold, scout factor): the host weights always carry over, the pruner's learned state only when
  the prune mode stays, the scout only when the new mode runs one of the same factor.
  ``from_pretrained(path, **overrides)`` cannot do all of this: it refuses a checkpoint whose pruner
  weights belong to another mode (unexpected keys), and it reloads LTP's saved ``threshold_base``
  over the one an overridden ``final_token_threshold`` asks for.

Distillation (section 3.1 of DESIGN.md): the scout is trained against the frozen teacher (the host of
the same model, recorded with :meth:`~ltp_nlp.LTPForSequenceClassification.record`) on
``L_att + 1 * L_hid + L_emb + L_pred`` (:func:`sttabt.approx.distillation_loss`, attention KL over the
valid queries only), AdamW without weight decay, constant learning rate, gradients clipped at 0.5.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from typing import Iterable, Mapping

import torch
from torch import nn

from sttabt.approx import distillation_loss

from .approx import HIDDEN_WEIGHT_TEXT, TextScout
from .configuration_ltp import HOST_TYPES, LTP_FIELDS, SCOUT_MODES, LTPConfig
from .glue_tasks import GlueTask, task_spec
from .modeling_ltp import LTPForSequenceClassification, weight_names

CLIP_GRAD = 0.5          # gradient-norm clip of the scout (reference recipe)
WEIGHT_DECAY = 0.0       # none in the reference recipe
PRUNER_KEY = ".pruner."
SCOUT_KEY = ".scout."
HEAD_KEY = "classifier."  # the sequence-classification head of every host (bert, roberta, ibert)
FRESH_HEAD_SEED = 0
BARE_ENCODER_ADVICE = ("fine-tune it on the task first (tools/run_glue.py, then tools/convert_to_ltp.py and "
                       "tools/run_ltp.py for LTP), or time it with tools/benchmark_glue.py, which gives it a fresh, "
                       "untrained head (speeds only)")
SETTINGS = tuple(field for field in LTP_FIELDS if field != "host_type")  # what reconfigure may change
HOST_CONFIG_SKIP = ("model_type", "architectures", "transformers_version", "_name_or_path")
# Mean attention KL on GLUE quoted by the STTABT paper for BERT-base (DESIGN.md section 3.1)
PAPER_ATTENTION_KL = {4: {"random_init": 1.64, "interpolated_init": 1.61, "distilled": 0.20},
                      8: {"distilled": 0.30}}
TRAIN_NAMES = {"total": "loss", "attention": "attention_kl", "hidden": "hidden_mse", "embedding": "embedding_mse",
               "prediction": "prediction_mse"}
QUALITY_NAMES = {"total": "distill_loss", "attention": "attention_kl", "hidden": "hidden_mse",
                 "embedding": "embedding_mse", "prediction": "prediction_mse"}


# ---------------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------------


def checkpoint_model_type(path: str | os.PathLike) -> str:
    """``model_type`` of a checkpoint folder's ``config.json``."""
    config = Path(path) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config} not found: pass a folder written by save_pretrained "
                                "(a fine-tuned BERT, RoBERTa or I-BERT classifier, or an LTP checkpoint)")
    model_type = json.loads(config.read_text()).get("model_type")
    if model_type != "ltp" and model_type not in HOST_TYPES:
        raise ValueError(f"{config} has model_type {model_type!r}: expected 'ltp' or a host "
                         f"({', '.join(HOST_TYPES)})")
    return model_type


def host_ltp_config(path: str | os.PathLike, **fields) -> LTPConfig:
    """The LTP configuration (prune mode ``none``) of a plain host checkpoint folder; ``fields`` replace
    those of its ``config.json`` (as in ``AutoConfig.from_pretrained``)."""
    from transformers import AutoConfig

    host = AutoConfig.from_pretrained(path, **fields)
    fields = {k: v for k, v in host.to_dict().items() if k not in HOST_CONFIG_SKIP}
    return LTPConfig(host_type=host.model_type, **fields)


def load_checkpoint(path: str | os.PathLike, *, init_scout: str | None = None) -> LTPForSequenceClassification:
    """A fine-tuned classifier as an LTP model with the checkpoint's own settings, in eval mode.

    ``path`` holds an LTP checkpoint or a plain ``bert`` / ``roberta`` / ``ibert`` sequence classifier
    (loaded with prune mode ``none``). Loading is strict: a missing or unexpected weight is an error.
    """
    path = os.fspath(path)
    model_type = checkpoint_model_type(path)
    if model_type == "ltp":
        model = LTPForSequenceClassification.from_pretrained(path, init_scout=init_scout)
    else:
        check_classifier(path)
        model = LTPForSequenceClassification.from_pretrained(path, config=host_ltp_config(path))
    return model.eval()


def check_classifier(path: str | os.PathLike, flag: str = "") -> None:
    """``ValueError`` saying what to do when ``path`` is a bare pretrained encoder (:func:`is_bare_encoder`)
    where a fine-tuned classifier is needed; ``flag``: the command-line flag that named it, for the message."""
    if is_bare_encoder(path):
        raise ValueError(f"{(flag + ' ') if flag else ''}{os.fspath(path)} is a pretrained {checkpoint_model_type(path)} "
                         f"encoder without a classifier head (no {HEAD_KEY}* weights), not a fine-tuned classifier: "
                         f"{BARE_ENCODER_ADVICE}")


def is_bare_encoder(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a plain host (``bert``, ``roberta``, ``ibert``) without a classifier head:
    a pretrained encoder such as ``BertModel.save_pretrained`` writes (sentence-transformers' MiniLM)."""
    return checkpoint_model_type(path) != "ltp" and not any(name.startswith(HEAD_KEY) for name in weight_names(path))


def classifier_fields(task: str | GlueTask) -> dict:
    """The configuration fields of a classifier head for GLUE ``task``: ``finetuning_task``, ``num_labels``
    and, unless it is a regression, ``id2label`` / ``label2id`` (what tools/run_glue.py fine-tunes)."""
    spec = task_spec(task)
    fields = dict(finetuning_task=spec.name, num_labels=spec.num_labels)
    if not spec.is_regression:
        fields.update(id2label=dict(enumerate(spec.labels)), label2id={k: i for i, k in enumerate(spec.labels)})
    return fields


def load_fresh_head(path: str | os.PathLike, task: str | GlueTask, *,
                    seed: int = FRESH_HEAD_SEED) -> LTPForSequenceClassification:
    """A bare pretrained host encoder (:func:`is_bare_encoder`) as an LTP model (prune mode ``none``) with a
    new classifier head for ``task``, in eval mode: the host's sequence classifier as tools/run_glue.py
    builds it before fine-tuning, the head drawn from ``seed`` (the global random state is left alone).

    Its predictions are chance; its speed is the fine-tuned model's. Loading is strict but for the head:
    any other missing weight, or an unexpected one, is an error listing them.
    """
    from transformers import AutoModelForSequenceClassification

    path = os.fspath(path)
    config = host_ltp_config(path, **classifier_fields(task))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        host, info = AutoModelForSequenceClassification.from_pretrained(path, config=config.host_config(),
                                                                        output_loading_info=True)
        model = LTPForSequenceClassification(config)
    problems = {"missing keys": sorted(k for k in info["missing_keys"] if not k.startswith(HEAD_KEY)),
                "unexpected keys": sorted(info["unexpected_keys"])}
    problems = {kind: keys for kind, keys in problems.items() if keys}
    if problems:
        lines = [f"{kind}: {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}" for kind, keys in problems.items()]
        raise ValueError(f"{path} is not a bare {config.host_type} encoder that only lacks its classifier head:\n  "
                         + "\n  ".join(lines) + "\nIs it a checkpoint of another architecture? Check model_type and "
                         "the layer sizes in its config.json.")
    missing, unexpected = model.load_state_dict(host.state_dict(), strict=False)
    stray = [key for key in missing if PRUNER_KEY not in key and SCOUT_KEY not in key]
    if unexpected or stray:
        raise RuntimeError(f"load_fresh_head lost weights (missing {stray}, unexpected {unexpected}): a bug, "
                           "please report")
    return model.eval()


def has_scout(model: LTPForSequenceClassification) -> bool:
    return isinstance(getattr(model.ltp, "scout", None), TextScout)


def reconfigure(model: LTPForSequenceClassification, *, init_scout: str | None = None,
                **settings) -> LTPForSequenceClassification:
    """``model`` under other LTP settings (``prune_mode``, ``token_keep_rate``, ``final_token_threshold``,
    ``approx_factor``, ``p_logit``, ...); returns ``model`` itself when nothing changes.

    Carried over: every host weight; the pruner's state when the prune mode stays (LTP's learned
    threshold deltas, STTABT's p-logits; an explicit ``p_logit`` resets the p-logits to it and
    ``final_token_threshold`` re-derives LTP's base thresholds); the scout when the new mode runs one
    and ``model`` has one of the same factor. A scout mode without a scout to carry needs
    ``init_scout="interpolate"`` (linear interpolation from the host), as in ``from_pretrained``.
    """
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"cannot change {', '.join(unknown)}: the LTP settings are {', '.join(SETTINGS)}")
    old = model.config
    if all(getattr(old, key) == value for key, value in settings.items()):
        return model
    config = copy.deepcopy(old)
    for key, value in settings.items():
        setattr(config, key, type(getattr(old, key))(value))
    config.validate_pruning()
    same_mode = config.prune_mode == old.prune_mode
    keep_scout = config.prune_mode in SCOUT_MODES and has_scout(model) and config.approx_factor == old.approx_factor

    def carried(key: str) -> bool:
        if PRUNER_KEY in key:
            rebuilt = key.endswith(".threshold_base") or (key.endswith(".p_logits") and "p_logit" in settings)
            return same_mode and not rebuilt
        return keep_scout if SCOUT_KEY in key else True

    state = {key: value for key, value in model.state_dict().items() if carried(key)}
    parameter = next(model.parameters())
    new = LTPForSequenceClassification(config).to(device=parameter.device, dtype=parameter.dtype)
    missing, unexpected = new.load_state_dict(state, strict=False)
    stray = [key for key in missing if PRUNER_KEY not in key and SCOUT_KEY not in key]
    if unexpected or stray:
        raise RuntimeError(f"reconfigure lost weights (missing {stray}, unexpected {unexpected}): a bug, please report")
    if config.prune_mode in SCOUT_MODES and not keep_scout:
        if init_scout != "interpolate":
            raise ValueError(f"the model has no approximation network (scout) of factor {config.approx_factor} for "
                             f"prune_mode {config.prune_mode!r}: distil one with tools/distill_scout_glue.py, or "
                             "pass init_scout='interpolate' to start it from the host by interpolation")
        new.ltp.scout.reset_from(new)
    return new.train(model.training)


def replace_folder(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Move the finished folder ``source`` to ``target``, replacing an older ``target``. ``target``
    never holds a half-written result: it appears by rename, and an older one is renamed away first."""
    source, target = Path(source), Path(target)
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        target.rename(old)
    source.rename(target)
    if old.exists():
        shutil.rmtree(old)


# ---------------------------------------------------------------------------------------------------
# Distillation
# ---------------------------------------------------------------------------------------------------


def model_inputs(batch: Mapping[str, torch.Tensor], device: torch.device | str = "cpu"
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(input_ids, attention_mask, token_type_ids or None)`` of a padded batch, on ``device``."""
    token_types = batch.get("token_type_ids")
    return (batch["input_ids"].to(device), batch["attention_mask"].to(device),
            None if token_types is None else token_types.to(device))


def prepare_distillation(model: LTPForSequenceClassification) -> TextScout:
    """Freeze the teacher (eval mode, no gradients) and make its scout the only trained part."""
    if not has_scout(model):
        raise ValueError("the model has no scout: reconfigure it to prune_mode='sttabt_abt' with "
                         "init_scout='interpolate' first")
    model.eval().requires_grad_(False)
    scout = model.ltp.scout
    return scout.train().requires_grad_(True)


def scout_optimizer(scout: nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW without weight decay (constant learning rate: no scheduler)."""
    return torch.optim.AdamW(scout.parameters(), lr=lr, weight_decay=WEIGHT_DECAY)


def distill_step(model: LTPForSequenceClassification, batch: Mapping[str, torch.Tensor],
                 optimizer: torch.optim.Optimizer, *, clip_grad: float = CLIP_GRAD) -> dict[str, float]:
    """One optimisation step of ``model.ltp.scout`` against the frozen host; the losses and grad norm."""
    scout = model.ltp.scout
    ids, mask, types = model_inputs(batch, next(scout.parameters()).device)
    with torch.no_grad():
        teacher = model.record(ids, mask, types)
    losses = distillation_loss(scout(ids, mask, types), teacher, scout.hidden_proj,
                               hidden_weight=HIDDEN_WEIGHT_TEXT, valid=mask.bool())
    optimizer.zero_grad(set_to_none=True)
    losses.total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(scout.parameters(), clip_grad)
    optimizer.step()
    return {name: float(getattr(losses, field).detach()) for field, name in TRAIN_NAMES.items()} | {
        "grad_norm": float(grad_norm)}


@torch.no_grad()
def scout_quality(model: LTPForSequenceClassification, scout: TextScout,
                  batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, float]:
    """How well ``scout`` approximates ``model``'s host on ``batches`` (eval mode, restored after).

    ``attention_kl``: the attention KL averaged over every valid query (and head and layer) of the
    set; the other losses of :func:`sttabt.approx.distillation_loss` are averaged over examples.
    """
    was_training = scout.training
    scout.eval()
    device = next(scout.parameters()).device
    sums = dict.fromkeys(QUALITY_NAMES.values(), 0.0)
    queries = examples = 0
    for batch in batches:
        ids, mask, types = model_inputs(batch, device)
        losses = distillation_loss(scout(ids, mask, types), model.record(ids, mask, types), scout.hidden_proj,
                                   hidden_weight=HIDDEN_WEIGHT_TEXT, valid=mask.bool())
        n_queries, n = int(mask.sum()), len(ids)
        for field, name in QUALITY_NAMES.items():
            weight = n_queries if field == "attention" else n
            sums[name] += float(getattr(losses, field)) * weight
        queries, examples = queries + n_queries, examples + n
    scout.train(was_training)
    if not examples:
        raise ValueError("no batches to measure the scout on")
    return {name: total / (queries if name == "attention_kl" else examples) for name, total in sums.items()}


def random_scout(model: LTPForSequenceClassification, factor: int, seed: int = 0) -> TextScout:
    """A randomly initialised scout of ``model``'s host (the baseline of the interpolated init)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        scout = TextScout(model.config.host_type, model.config.host_config(), factor)
    parameter = next(model.parameters())
    return scout.to(device=parameter.device, dtype=parameter.dtype).eval()
