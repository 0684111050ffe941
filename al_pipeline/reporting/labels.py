"""[reporting] What happened to labels: one item's history, the ties annotators left, and
the training labels that changed after a model learned from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from al_pipeline.errors import ConfigError, IngestError
from al_pipeline.ingest.images import file_sha256
from al_pipeline.store.catalog import ChangedLabel, Tie
from al_pipeline.store.labels import LabelEvent
from al_pipeline.store.state import State


@dataclass(frozen=True)
class LabelQuery:
    """What ``al labels`` asks: exactly one of an item (by id or file), the ties, or the
    labels changed after training."""

    item: int | None = None
    path: Path | None = None
    disagreements: bool = False
    changed: bool = False


@dataclass
class ItemLabels:
    """One item's labels, oldest first (retired ones included), and its ties."""

    item_id: int
    path: Path
    current: str | None
    history: list[LabelEvent]
    tied_in_rounds: list[int] = field(default_factory=list)


@dataclass
class LabelReport:
    """The answer to a :class:`LabelQuery`: one of the three parts is filled."""

    item: ItemLabels | None = None
    ties: list[Tie] | None = None
    changed: list[ChangedLabel] | None = None


def label_report(state: State, query: LabelQuery) -> LabelReport:
    asked = [query.item is not None, query.path is not None, query.disagreements, query.changed]
    if sum(asked) != 1:
        raise ConfigError(
            "Pass exactly one of --item ID, --path FILE, --disagreements or --changed."
        )
    if query.disagreements:
        return LabelReport(ties=state.tie_records())
    if query.changed:
        return LabelReport(changed=state.changed_after_training())
    item_id = query.item if query.item is not None else _item_of(state, query.path)
    return LabelReport(item=_item_labels(state, item_id))


def _item_of(state: State, path: Path | None) -> int:
    assert path is not None
    try:
        sha = file_sha256(path)
    except OSError as exc:
        raise IngestError(f"Cannot read --path {path} ({exc.strerror}).") from exc
    item_id = state.item_by_sha256(sha)
    if item_id is None:
        raise IngestError(f"--path {path} is not in any pool of this workspace.")
    return item_id


def _item_labels(state: State, item_id: int) -> ItemLabels:
    path = state.item_path(item_id)
    if path is None:
        raise ConfigError(f"--item {item_id}: no such item ('al export labels' lists the ids).")
    tied = sorted(t.round_id for t in state.tie_records() if t.item_id == item_id)
    return ItemLabels(
        item_id, path, state.current_label(item_id), state.label_history(item_id), tied
    )
