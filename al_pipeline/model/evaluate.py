"""[evaluate] The metrics the field reports, computed with scikit-learn on the test split."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from al_pipeline.config import Config
from al_pipeline.errors import NoLabelsError
from al_pipeline.model.checkpoints import find_checkpoint, write_meta
from al_pipeline.model.embeddings import item_files
from al_pipeline.model.score import score
from al_pipeline.progress import Progress, silent
from al_pipeline.records import ClassMetrics, Metrics
from al_pipeline.store.state import State


@dataclass
class EvaluationReport:
    """What ``al evaluate`` measured."""

    tag: str
    metrics: Metrics
    skipped: list[tuple[str, str]] = field(default_factory=list)
    features_computed: int = 0


def compute_metrics(
    truth: NDArray[np.int64], probabilities: NDArray[np.float32], classes: tuple[str, ...]
) -> Metrics:
    """Accuracy, per-class and macro precision / recall / F1, ROC-AUC, confusion matrix.

    ROC-AUC is binary for 2 classes and one-vs-rest macro for more; it is None when the
    test set lacks a class (it is undefined then).
    """
    labels = list(range(len(classes)))
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        truth, predicted, labels=labels, zero_division=0
    )
    macro = precision_recall_fscore_support(
        truth, predicted, labels=labels, average="macro", zero_division=0
    )
    return Metrics(
        count=len(truth),
        accuracy=float(accuracy_score(truth, predicted)),
        macro_precision=float(macro[0]),
        macro_recall=float(macro[1]),
        macro_f1=float(macro[2]),
        roc_auc=_roc_auc(truth, probabilities, labels),
        per_class={
            name: ClassMetrics(float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]))
            for i, name in enumerate(classes)
        },
        confusion_matrix=confusion_matrix(truth, predicted, labels=labels).tolist(),
        classes=list(classes),
    )


def _roc_auc(
    truth: NDArray[np.int64], probabilities: NDArray[np.float32], labels: list[int]
) -> float | None:
    if len(np.unique(truth)) < len(labels):
        return None
    if len(labels) == 2:
        return float(roc_auc_score(truth, probabilities[:, 1]))
    return float(
        roc_auc_score(truth, probabilities, multi_class="ovr", average="macro", labels=labels)
    )


def evaluate(
    config: Config, state: State, tag: str | None = None, progress: Progress = silent
) -> EvaluationReport:
    """Evaluate a checkpoint (default: the latest) on the held-out test split."""
    row, checkpoint = find_checkpoint(config, state, tag)
    test = state.labelled_items("test")
    if not test:
        raise NoLabelsError(
            "The workspace has no held-out test split to evaluate on. Add labelled images with "
            "'al pool add DIR --labelled --test-fraction 0.2'."
        )
    scored = score(config, state, checkpoint, item_files(config, test), progress)
    truth = np.array([config.class_index(test[p].label) for p in scored.positions])
    metrics = compute_metrics(truth, scored.probabilities, config.classes)
    state.record_evaluation(row.id, metrics)
    write_meta(checkpoint.path, replace(checkpoint.meta, metrics=metrics))
    return EvaluationReport(
        row.tag,
        metrics,
        skipped=[(str(test[p].path), why) for p, why in scored.failures],
        features_computed=scored.computed,
    )
