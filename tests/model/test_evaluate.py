"""Metrics computed with scikit-learn, checked against hand-counted cases."""

from __future__ import annotations

import numpy as np
import pytest

from al_pipeline.model.evaluate import compute_metrics


def test_binary_metrics() -> None:
    truth = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array(
        [[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]], dtype=np.float32
    )
    metrics = compute_metrics(truth, probs, ("with_mask", "without_mask"))
    assert metrics.accuracy == pytest.approx(4 / 6)
    assert metrics.confusion_matrix == [[2, 1], [1, 2]]
    assert metrics.per_class["with_mask"].recall == pytest.approx(2 / 3)
    assert metrics.roc_auc == pytest.approx(8 / 9)
    assert metrics.macro_f1 == pytest.approx(2 / 3)


def test_three_classes_with_a_missing_class_has_no_roc_auc() -> None:
    truth = np.array([0, 1, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32)
    metrics = compute_metrics(truth, probs, ("a", "b", "c"))
    assert metrics.roc_auc is None
    assert metrics.confusion_matrix == [[1, 0, 0], [0, 1, 1], [0, 0, 0]]
    assert metrics.per_class["c"].support == 0


def test_three_class_roc_auc_is_one_vs_rest_macro() -> None:
    truth = np.array([0, 1, 2, 0, 1, 2])
    probs = np.eye(3, dtype=np.float32)[truth] * 0.7 + 0.1
    assert compute_metrics(truth, probs, ("a", "b", "c")).roc_auc == pytest.approx(1.0)
