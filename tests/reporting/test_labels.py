"""`al labels`: one item's history, the ties, and training labels changed after use."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from al_pipeline.config import Config
from al_pipeline.errors import ConfigError, IngestError
from al_pipeline.ingest.folders import add_folder
from al_pipeline.records import CheckpointMeta, RoundParams
from al_pipeline.reporting.labels import LabelQuery, label_report
from al_pipeline.store.labels import PulledLabel
from al_pipeline.store.rounds import QueueEntry
from al_pipeline.store.state import State
from cli import app


def _at(database: Path, sql: str, *args: object) -> None:
    """Set a timestamp by hand: the store keeps them to the second."""
    with sqlite3.connect(database) as db:
        db.execute(sql, args)


def test_history_ties_and_labels_changed_after_training(
    workspace: Config, state: State, make_images: Callable[..., list[Path]]
) -> None:
    photos = make_images(workspace.root / "raw", 3)
    add_folder(workspace, state, workspace.root / "raw")
    a, b, c = (i.item_id for i in state.items_in_pool("raw"))
    round_id = state.start_round(
        "random",
        "labelstudio",
        RoundParams(),
        [QueueEntry(i, n, None, None, None) for n, i in enumerate((a, b, c))],
    )
    state.record_pulled(
        round_id,
        [
            PulledLabel(a, "with_mask", "human", "ann@x", "1"),
            PulledLabel(b, "without_mask", "human", "bob@x", "2"),
        ],
        unresolved=[c],
    )
    _at(workspace.database, "UPDATE labels SET created_at = '2026-01-01T00:00:00+00:00'")
    state.add_checkpoint(Path("checkpoints/m1"), CheckpointMeta("mobilenet_v2", 224, "d", tag="m1"))
    _at(workspace.database, "UPDATE checkpoints SET created_at = '2026-01-02T00:00:00+00:00'")
    # After m1 trained: a's label changes, b's is retracted, c is decided.
    state.record_pulled(
        round_id,
        [
            PulledLabel(a, "without_mask", "human", "cat@x", "1"),
            PulledLabel(c, "with_mask", "human", "ann@x", "3"),
        ],
        retracted=[b],
    )
    _at(
        workspace.database,
        "UPDATE labels SET created_at = ? WHERE created_at > '2026-01-02'",
        "2026-01-03T00:00:00+00:00",
    )
    _at(
        workspace.database,
        "UPDATE labels SET retired_at = ? WHERE retired_at IS NOT NULL",
        "2026-01-03T00:00:00+00:00",
    )

    history = label_report(state, LabelQuery(item=a)).item
    assert history is not None and history.current == "without_mask"
    assert [(e.class_name, e.annotator) for e in history.history] == [
        ("with_mask", "ann@x"),
        ("without_mask", "cat@x"),
    ]
    by_path = label_report(state, LabelQuery(path=photos[2])).item
    assert by_path is not None and by_path.item_id == c and by_path.current == "with_mask"
    assert by_path.tied_in_rounds == []  # the round's last pull decided it

    ties = label_report(state, LabelQuery(disagreements=True)).ties
    assert ties == []
    changed = label_report(state, LabelQuery(changed=True)).changed
    assert changed is not None
    assert {(x.item_id, x.old_label, x.new_label, x.trained_by) for x in changed} == {
        (a, "with_mask", "without_mask", "m1"),
        (b, "without_mask", None, "m1"),
    }


def test_a_tie_is_listed_until_decided(
    workspace: Config, state: State, make_images: Callable[..., list[Path]]
) -> None:
    make_images(workspace.root / "raw", 1)
    add_folder(workspace, state, workspace.root / "raw")
    [item] = (i.item_id for i in state.items_in_pool("raw"))
    round_id = state.start_round(
        "random", "labelstudio", RoundParams(), [QueueEntry(item, 0, None, None, None)]
    )
    state.record_pulled(round_id, [], unresolved=[item])
    ties = label_report(state, LabelQuery(disagreements=True)).ties
    assert ties is not None and [(t.item_id, t.round_id, t.label) for t in ties] == [
        (item, round_id, None)
    ]
    history = label_report(state, LabelQuery(item=item)).item
    assert history is not None and history.tied_in_rounds == [round_id] and history.current is None


def test_bad_queries_are_one_clear_error(
    workspace: Config, state: State, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    [stray] = make_images(tmp_path / "elsewhere", 1)
    with pytest.raises(ConfigError, match="exactly one"):
        label_report(state, LabelQuery())
    with pytest.raises(ConfigError, match="exactly one"):
        label_report(state, LabelQuery(item=1, changed=True))
    with pytest.raises(ConfigError, match="no such item"):
        label_report(state, LabelQuery(item=999))
    with pytest.raises(IngestError, match="not in any pool"):
        label_report(state, LabelQuery(path=stray))
    with pytest.raises(IngestError, match="Cannot read"):
        label_report(state, LabelQuery(path=tmp_path / "gone.png"))
    state.close()
    done = CliRunner().invoke(app, ["-w", str(workspace.root), "labels", "--changed", "--json"])
    assert done.exit_code == 0 and json.loads(done.output)["changed"] == []
    bad = CliRunner().invoke(app, ["-w", str(workspace.root), "labels"])
    assert bad.exit_code == 1 and "exactly one" in bad.output


def test_an_item_that_never_had_a_label_says_so(
    workspace: Config, state: State, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    make_images(tmp_path / "photos", 1)
    add_folder(workspace, state, tmp_path / "photos")
    state.close()
    shown = CliRunner().invoke(app, ["-w", str(workspace.root), "labels", "--item", "1"])
    assert shown.exit_code == 0, shown.output
    assert "label now: none" in shown.output and "never had a label" in shown.output
