"""The state database: migrations, versions, transactions."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from al_pipeline.config import Config
from al_pipeline.errors import StateError
from al_pipeline.state import SCHEMA_VERSION, NewItem, State
from cli import app
from tests.conftest import snapshot


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


def _refuses_unchanged(cli: CliRunner, config: Config, says: str) -> None:
    """``pool stats`` refuses the database with one line and leaves its bytes as they were
    (no journal mode switched, no -wal file made)."""
    before = {p.name: p.read_bytes() for p in config.root.glob("state.sqlite3*")}
    result = cli.invoke(app, ["-w", str(config.root), "pool", "stats"])
    assert result.exit_code == 1, result.output
    assert says in result.output and "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in config.root.glob("state.sqlite3*")} == before


def _replace_database(config: Config, build: Callable[[sqlite3.Connection], None]) -> None:
    for path in config.root.glob("state.sqlite3*"):
        path.unlink()
    with sqlite3.connect(config.database) as db:
        build(db)
    db.close()


def test_a_database_of_garbage_is_refused_unchanged(cli: CliRunner, workspace: Config) -> None:
    _replace_database(workspace, lambda db: None)
    workspace.database.write_bytes(b"this is not a database at all" * 100)
    _refuses_unchanged(cli, workspace, "is not a SQLite database")


def test_another_applications_database_is_refused_unchanged(
    cli: CliRunner, workspace: Config
) -> None:
    _replace_database(workspace, lambda db: db.execute("CREATE TABLE photos (id INTEGER)"))
    _refuses_unchanged(cli, workspace, "database of another application")


def test_a_newer_schema_is_refused_unchanged(cli: CliRunner, workspace: Config) -> None:
    with sqlite3.connect(workspace.database) as db:
        db.execute("PRAGMA journal_mode = DELETE")
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    assert not (workspace.root / "state.sqlite3-wal").exists()
    _refuses_unchanged(cli, workspace, "newer than this al-pipeline")
    with sqlite3.connect(workspace.database) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_a_missing_table_is_refused_unchanged(cli: CliRunner, workspace: Config) -> None:
    with sqlite3.connect(workspace.database) as db:
        db.execute("DROP TABLE queue")
        db.execute("PRAGMA journal_mode = DELETE")
    db.close()
    _refuses_unchanged(cli, workspace, "table(s) queue are missing")


def test_a_write_lock_held_by_another_process_ends_in_one_line(
    cli: CliRunner, workspace: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another program (a sqlite3 shell, say) holds a write transaction for longer than the
    busy timeout: the command says so and changes nothing."""
    import al_pipeline.state as state_module

    monkeypatch.setattr(state_module, "BUSY_SECONDS", 1.0)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            f"db = sqlite3.connect({str(workspace.database)!r}, isolation_level=None)\n"
            "db.execute('BEGIN IMMEDIATE'); print('held', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        before = snapshot(workspace.root)
        result = cli.invoke(
            app, ["-w", str(workspace.root), "pool", "add", str(workspace.pools_dir)]
        )
        assert result.exit_code == 1, result.output
        assert "locked by another program" in result.output
        assert "Traceback" not in result.output
    finally:
        holder.kill()
        holder.wait()
    assert snapshot(workspace.root) == before
