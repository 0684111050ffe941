"""modAL 0.4.2 with scikit-learn >= 1.8: how the project copes.

``ActiveLearner.teach()/fit()`` call ``check_X_y(force_all_finite=...)``, which
scikit-learn 1.8 removed. The project therefore never uses ``ActiveLearner``: it calls
modAL's query functions directly on its own estimator (anything with ``predict_proba``).
These tests pin that the query functions work with the installed scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from modAL.batch import uncertainty_batch_sampling
from modAL.uncertainty import entropy_sampling, margin_sampling, uncertainty_sampling
from numpy.typing import NDArray
from sklearn.linear_model import LogisticRegression

Floats = NDArray[np.float64]


@pytest.fixture
def fitted() -> tuple[LogisticRegression, Floats]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    y = (x[:, 0] + 0.3 * rng.normal(size=200) > 0).astype(int)
    return LogisticRegression().fit(x[:40], y[:40]), x[40:]


@pytest.mark.parametrize("query", [uncertainty_sampling, margin_sampling, entropy_sampling])
def test_uncertainty_queries_pick_the_least_certain(
    fitted: tuple[LogisticRegression, Floats], query: object
) -> None:
    model, pool = fitted
    picked = query(model, pool, n_instances=10)  # type: ignore[operator]
    indices = picked[0] if isinstance(picked, tuple) else picked
    assert len(set(indices.tolist())) == 10
    confidence = model.predict_proba(pool).max(axis=1)
    assert confidence[indices].mean() < confidence.mean()


@dataclass
class Estimator:
    """What the project hands to modAL: ``predict_proba`` plus the two attributes modAL's
    ranked batch reads from a learner (labelled features, and no transform)."""

    model: LogisticRegression
    X_training: Floats | None
    on_transformed: bool = False

    def predict_proba(self, x: Floats) -> Floats:
        return np.asarray(self.model.predict_proba(x), np.float64)


@pytest.mark.parametrize("labelled", [True, False])
def test_ranked_batch_query_works_without_active_learner(
    fitted: tuple[LogisticRegression, Floats], labelled: bool
) -> None:
    model, pool = fitted
    estimator = Estimator(model, pool[:5] if labelled else None)
    indices, _ = uncertainty_batch_sampling(estimator, pool, n_instances=10)
    assert len(set(np.asarray(indices).tolist())) == 10
