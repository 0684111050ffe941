"""Records several stages write: the history row of a round (or of the starting point).

A plain module at the bottom of the stack, so that training (the starting point, round 0)
and the round loop (each closed round) build one and the same row.
"""

from __future__ import annotations

from typing import Any

from al_pipeline.config import Config
from al_pipeline.store.state import RoundRow, State, now

STARTING_POINT = "initial"


def history_row(
    config: Config,
    state: State,
    open_round: RoundRow | None,
    metrics: dict[str, Any],
    change: float | None,
    training_seconds: float,
    tag: str | None,
    note: str | None = None,
) -> dict[str, Any]:
    """What a round bought: labels, test metrics, pool change, timing, model.

    ``open_round=None`` is round 0: the model trained on the labels there were before the
    first round (its "strategy" is ``initial``).
    """
    counts = state.label_counts()
    labelled = sum(counts.values())
    row: dict[str, Any] = {
        "round": open_round.id if open_round else 0,
        "strategy": open_round.strategy if open_round else STARTING_POINT,
        "batch_size": open_round.size if open_round else labelled,
        "labeller": open_round.labeller if open_round else "import",
        "labelled": labelled,
        "labelled_per_class": {c: counts.get(c, 0) for c in config.classes},
        "accuracy": metrics.get("accuracy"),
        "macro_f1": metrics.get("macro_f1"),
        "roc_auc": metrics.get("roc_auc"),
        "recall": {c: v["recall"] for c, v in metrics.get("per_class", {}).items()},
        "pool_change": change,
        "selection_seconds": open_round.params.get("selection_seconds") if open_round else None,
        "training_seconds": round(training_seconds, 2),
        "checkpoint": tag,
        "model_version": tag,
        "timestamp": now(),
    }
    if note:
        row["note"] = note
    return row
