"""The state database: migrations, versions, transactions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from al_pipeline.errors import StateError
from al_pipeline.state import SCHEMA_VERSION, NewItem, State


def test_new_database_is_migrated_to_the_current_version(tmp_path: Path) -> None:
    with State(tmp_path / "s.sqlite3") as state:
        assert state.version == SCHEMA_VERSION
    with sqlite3.connect(tmp_path / "s.sqlite3") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"items", "labels", "rounds", "queue", "checkpoints", "metrics", "pools"} <= tables


def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match="Upgrade al-pipeline"):
        State(path)


def test_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    item = NewItem("a.png", "0" * 64, 1, 1, "PNG", 1, 1, label="with_mask")
    with State(tmp_path / "s.sqlite3") as state:
        pool = state.add_pool("p", tmp_path)
        with pytest.raises(RuntimeError), state.transaction() as db:
            state.insert_items(db, pool.id, [item])
            raise RuntimeError("killed mid-way")
        assert state.item_count() == 0
        with state.transaction() as db:
            state.insert_items(db, pool.id, [item])
        assert state.item_count() == 1 and state.current_label(1) == "with_mask"


def test_latest_label_is_current_and_history_is_kept(tmp_path: Path) -> None:
    with State(tmp_path / "s.sqlite3") as state:
        pool = state.add_pool("p", tmp_path)
        with state.transaction() as db:
            state.insert_items(db, pool.id, [NewItem("a.png", "1" * 64, 1, 1, "PNG", 1, 1)])
            state.insert_label(db, 1, "with_mask", "human", annotator="ann@example.com")
            state.insert_label(db, 1, "without_mask", "human", annotator="rev@example.com")
        assert state.current_label(1) == "without_mask"
