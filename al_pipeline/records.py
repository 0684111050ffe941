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
        return cls(**_known(cls, data))


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


def _known(cls: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``data`` that ``cls`` has fields for: keys a later version added are
    ignored, and fields an earlier version lacked get their defaults."""
    names = {f.name for f in fields(cls)}
    return {key: value for key, value in data.items() if key in names}


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint was trained from and on. Written beside the model as ``meta.json``
    (so the folder explains itself) and kept in the state database."""

    backbone: str
    image_size: int
    features_digest: str
    tag: str = ""
    pretrained: bool = True
    precision: str = "float32"
    feature_layers: list[str] = field(default_factory=list)  # empty: the last layer's pool
    classes: list[str] = field(default_factory=list)
    fine_tuned: bool = False
    fine_tune_layers: int = 0
    fine_tune_epochs: int = 0
    fine_tune_rate: float = 0.0  # Adam's learning rate while fine-tuning
    labelled_count: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    epochs: int = 0
    seed: int = 0
    imbalance: str = "weights"  # how training coped with unequal classes
    tau: float = 0.0  # the logit adjustment, when imbalance is "logit-adjust"
    round_id: int | None = None
    training_seconds: float = 0.0
    created_at: str = ""
    metrics: Metrics | None = None  # held-out metrics, once evaluated

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.metrics is None:
            del data["metrics"]
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CheckpointMeta:
        """Raises KeyError or TypeError on a meta that lacks what loading a model needs."""
        known = _known(cls, data)
        found = known.pop("metrics", None)
        return cls(metrics=Metrics.from_json(found) if found else None, **known)


@dataclass(frozen=True)
class RoundParams:
    """How a round's queue was chosen, recorded when it starts."""

    balance: bool = False  # the strategy was wrapped to balance classes
    selection_seconds: float = 0.0
    pool_size: int = 0
    cold_start: bool = False  # no model yet: picked without predictions
    model: str | None = None  # tag of the checkpoint that scored the pool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundParams:
        return cls(**_known(cls, data))
