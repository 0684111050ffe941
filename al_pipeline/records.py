"""Typed records several stages share. Standard library only, so every stage, the store
included, may use them; each converts to and from the JSON it is stored and shown as."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

STARTING_POINT = "initial"


@dataclass(frozen=True)
class HistoryRow:
    """What a round bought: labels, held-out metrics, pool change, timing and the model.

    Round 0 is the starting point: the model trained on the labels there were before the
    first round (its ``strategy`` is ``initial``, its ``labeller`` ``import``).
    """

    round: int
    strategy: str
    labelled: int
    batch_size: int = 0
    labeller: str = ""
    labelled_per_class: dict[str, int] = field(default_factory=dict)
    accuracy: float | None = None
    macro_f1: float | None = None
    roc_auc: float | None = None
    recall: dict[str, float] = field(default_factory=dict)
    pool_change: float | None = None
    selection_seconds: float | None = None
    training_seconds: float | None = None
    checkpoint: str | None = None
    model_version: str | None = None
    timestamp: str = ""
    note: str | None = None  # why there are no metrics (no model trained yet)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.note is None:
            del data["note"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> HistoryRow:
        """A stored row; keys a later version added get their defaults, unknown ones are
        ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in known})


@dataclass(frozen=True)
class ClassMetrics:
    """One class on the held-out split."""

    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class Metrics:
    """A model on the held-out split. ``roc_auc`` is None when the split lacks a class (it
    is undefined then)."""

    count: int
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    roc_auc: float | None
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]]
    classes: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Metrics:
        per_class = {name: ClassMetrics(**row) for name, row in data["per_class"].items()}
        known = {f.name for f in fields(cls)} - {"per_class"}
        return cls(per_class=per_class, **{k: v for k, v in data.items() if k in known})

    @staticmethod
    def stored(meta: Mapping[str, Any]) -> Metrics | None:
        """The metrics a checkpoint's meta carries, if it was evaluated."""
        found = meta.get("metrics")
        return Metrics.from_json(found) if found else None
