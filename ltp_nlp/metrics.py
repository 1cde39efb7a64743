"""GLUE metrics with scipy and scikit-learn (no ``evaluate``, no hub).

``compute_metrics(task, predictions, labels)`` returns the task's metrics plus ``"score"``, the value a
trainer should maximise when it keeps the best model:

=========================  ==============================================  =========================
task                       keys                                            ``score``
=========================  ==============================================  =========================
RTE, SST2, QNLI, MNLI      ``accuracy``                                    accuracy
MRPC, QQP                  ``accuracy``, ``f1``, ``combined_score``        mean of accuracy and F1
STSB                       ``pearson``, ``spearmanr``, ``combined_score``  mean of Pearson, Spearman
CoLA                       ``matthews_correlation``                        Matthews correlation
=========================  ==============================================  =========================

F1 is that of class 1 (MRPC ``equivalent``, QQP ``duplicate``). A correlation that is undefined
(constant predictions or labels) counts as 0, as scikit-learn does for the Matthews correlation, so
that ``score`` is always a number a trainer can compare.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from ltp_nlp.glue import GlueTask, task_spec

SCORE_KEY = "score"
COMBINED_KEY = "combined_score"

METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "RTE": ("accuracy",),
    "SST2": ("accuracy",),
    "QNLI": ("accuracy",),
    "MNLI": ("accuracy",),
    "MRPC": ("accuracy", "f1", COMBINED_KEY),
    "QQP": ("accuracy", "f1", COMBINED_KEY),
    "STSB": ("pearson", "spearmanr", COMBINED_KEY),
    "CoLA": ("matthews_correlation",),
}
"""The keys ``compute_metrics`` returns for each task, besides ``"score"``."""


def best_metric_name(task: str | GlueTask) -> str:
    """The key whose value ``"score"`` repeats: ``accuracy``, ``combined_score`` or ``matthews_correlation``."""
    return task_spec(task).metric


def compute_metrics(task: str | GlueTask, predictions: Any, labels: Any) -> dict[str, float]:
    """The task's metrics plus ``"score"``.

    ``predictions``: logits ``(B, C)`` or class indices ``(B,)`` for classification (logits are
    arg-maxed); scores ``(B,)`` or ``(B, 1)`` for STS-B. ``labels``: ``(B,)`` (a trailing dim of 1 is
    squeezed). Arrays, lists and CPU tensors are accepted.
    """
    spec = task_spec(task)
    predictions = _as_array(predictions, "predictions")
    labels = _flat(_as_array(labels, "labels"), "labels", spec)
    if spec.is_regression:
        predictions = _flat(predictions, "predictions", spec).astype(np.float64)
        labels = labels.astype(np.float64)
    else:
        predictions = _class_indices(predictions, spec)
        labels = labels.astype(np.int64)
    _check_lengths(predictions, labels)
    metrics = _METRIC_FUNCTIONS[spec.name](predictions, labels)
    metrics[SCORE_KEY] = metrics[spec.metric]
    return metrics


# ---------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------


def _as_array(values: Any, what: str) -> np.ndarray:
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().float().cpu().numpy() if values.is_floating_point() else values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.size == 0:
        raise ValueError(f"{what} are empty: there is nothing to score")
    return array


def _flat(values: np.ndarray, what: str, spec: GlueTask) -> np.ndarray:
    """(B,) from (B,) or (B, 1)."""
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise ValueError(f"{what} for {spec.name} must have shape (B,) or (B, 1), got {values.shape}")
    return values


def _class_indices(predictions: np.ndarray, spec: GlueTask) -> np.ndarray:
    """Class indices from logits (B, C) or from indices (B,)."""
    if predictions.ndim == 2 and predictions.shape[1] > 1:
        if predictions.shape[1] != spec.num_labels:
            raise ValueError(
                f"{spec.name} has {spec.num_labels} classes but the logits have {predictions.shape[1]} columns"
            )
        return predictions.argmax(axis=-1)
    indices = _flat(predictions, "predictions", spec)
    if np.issubdtype(indices.dtype, np.floating) and not np.all(indices == np.round(indices)):
        raise ValueError(
            f"{spec.name} is a classification task: pass logits (B, {spec.num_labels}) or class indices, "
            "not one float per row"
        )
    return indices.astype(np.int64)


def _check_lengths(predictions: np.ndarray, labels: np.ndarray) -> None:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels: they must pair up")


# ---------------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------------


def _accuracy(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"accuracy": float(accuracy_score(labels, predictions))}


def _accuracy_and_f1(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    accuracy = float(accuracy_score(labels, predictions))
    f1 = float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0))
    return {"accuracy": accuracy, "f1": f1, COMBINED_KEY: (accuracy + f1) / 2}


def _correlations(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    pearson = _correlation(stats.pearsonr, predictions, labels)
    spearman = _correlation(stats.spearmanr, predictions, labels)
    return {"pearson": pearson, "spearmanr": spearman, COMBINED_KEY: (pearson + spearman) / 2}


def _correlation(function: Callable, predictions: np.ndarray, labels: np.ndarray) -> float:
    """The correlation, or 0 where it is undefined (fewer than 2 rows, constant inputs)."""
    if len(labels) < 2:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about constant input and returns NaN
        value = float(function(predictions, labels)[0])
    return 0.0 if math.isnan(value) else value


def _matthews(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {"matthews_correlation": float(matthews_corrcoef(labels, predictions))}


_METRIC_FUNCTIONS: dict[str, Callable[[np.ndarray, np.ndarray], dict[str, float]]] = {
    "RTE": _accuracy,
    "SST2": _accuracy,
    "QNLI": _accuracy,
    "MNLI": _accuracy,
    "MRPC": _accuracy_and_f1,
    "QQP": _accuracy_and_f1,
    "STSB": _correlations,
    "CoLA": _matthews,
}
