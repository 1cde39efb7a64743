"""GLUE metrics (ltp_nlp.metrics) against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ltp_nlp.glue import GLUE_TASKS
from ltp_nlp.metrics import METRIC_NAMES, best_metric_name, compute_metrics


@pytest.mark.parametrize("task", ["RTE", "SST2", "QNLI"])
def test_accuracy_tasks_take_argmax_of_logits(task):
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])  # argmax 0, 1, 0, 1
    metrics = compute_metrics(task, logits, [0, 1, 1, 1])
    assert metrics == {"accuracy": 0.75, "score": 0.75}


def test_mnli_accuracy_from_three_class_logits_and_from_indices():
    logits = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 2.0], [0.0, 5.0, 1.0]])  # argmax 0, 2, 1
    assert compute_metrics("mnli", logits, torch.tensor([0, 2, 2]))["accuracy"] == pytest.approx(2 / 3)
    assert compute_metrics("mnli", [0, 2, 1], [0, 2, 2])["score"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("task", ["MRPC", "QQP"])
def test_accuracy_f1_and_their_mean(task):
    predictions, labels = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]  # TP 2, FP 1, FN 1, TN 1
    metrics = compute_metrics(task, predictions, labels)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["f1"] == pytest.approx(2 / 3)  # precision = recall = 2/3
    assert metrics["combined_score"] == pytest.approx((3 / 5 + 2 / 3) / 2)
    assert metrics["score"] == metrics["combined_score"]


def test_stsb_pearson_spearman_and_their_mean():
    predictions = np.array([[1.0], [2.0], [3.0], [10.0]])  # trailing dim of 1 is squeezed
    labels = [1.0, 3.0, 2.0, 4.0]
    metrics = compute_metrics("STS-B", predictions, labels)
    pearson = 13 / math.sqrt(50 * 5)  # deviations (-3, -2, -1, 6) and (-1.5, .5, -.5, 1.5)
    spearman = 0.8  # ranks (1, 2, 3, 4) and (1, 3, 2, 4): 1 - 6 * 2 / (4 * 15)
    assert metrics["pearson"] == pytest.approx(pearson)
    assert metrics["spearmanr"] == pytest.approx(spearman)
    assert metrics["combined_score"] == pytest.approx((pearson + spearman) / 2)
    assert metrics["score"] == metrics["combined_score"]


def test_stsb_constant_predictions_score_zero_not_nan():
    metrics = compute_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert metrics["score"] == 0.0


def test_cola_matthews_correlation():
    predictions, labels = [1, 1, 0, 0, 1, 0], [1, 0, 0, 1, 1, 0]  # TP 2, FP 1, TN 2, FN 1
    metrics = compute_metrics("cola", predictions, labels)
    assert metrics["matthews_correlation"] == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))
    assert metrics["score"] == metrics["matthews_correlation"]


def test_every_task_names_its_metrics_and_score():
    assert set(METRIC_NAMES) == set(GLUE_TASKS)
    for name, spec in GLUE_TASKS.items():
        predictions = [0.5, 1.5, 2.5] if spec.is_regression else [0, 1, 1]
        metrics = compute_metrics(name, predictions, [1.0, 1.0, 2.0] if spec.is_regression else [0, 1, 0])
        assert set(metrics) == {*METRIC_NAMES[name], "score"}
        assert metrics["score"] == metrics[best_metric_name(name)]


def test_metric_input_errors():
    with pytest.raises(ValueError, match="must pair up"):
        compute_metrics("rte", [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="3 classes"):
        compute_metrics("mnli", np.zeros((2, 2)), [0, 1])
    with pytest.raises(ValueError, match="classification"):
        compute_metrics("sst2", [0.2, 0.7], [0, 1])
