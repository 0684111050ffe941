"""The state database: migrations, versions, transactions."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from al_pipeline.config import Config
from al_pipeline.errors import StateError
from al_pipeline.records import RoundParams
from al_pipeline.store.db import MIGRATIONS, SCHEMA_VERSION, sha_key
from al_pipeline.store.items import ImageFile, NewItem
from al_pipeline.store.labels import PulledLabel
from al_pipeline.store.rounds import QueueEntry
from al_pipeline.store.state import State
from cli import app
from tests.conftest import snapshot


def test_new_database_is_migrated_to_the_current_version(tmp_path: Path) -> None:
    with State(tmp_path / "s.sqlite3") as state:
        assert state.version == SCHEMA_VERSION
    with sqlite3.connect(tmp_path / "s.sqlite3") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"items", "labels", "rounds", "queue", "checkpoints", "metrics", "pools"} <= tables


def test_every_reference_to_an_item_is_indexed(tmp_path: Path) -> None:
    """Deleting items ('al pool remove') makes SQLite look up each table that refers to
    items, per item: a reference without an index of its own (a partial index or the
    second column of a key do not count) turns that into a scan, and the removal of a large
    pool into hours."""
    with State(tmp_path / "s.sqlite3"):
        pass
    with closing(sqlite3.connect(tmp_path / "s.sqlite3")) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            for ref in db.execute(f"PRAGMA foreign_key_list({table})").fetchall():
                if ref[2] != "items":
                    continue
                leading = [
                    db.execute(f"PRAGMA index_info({index[1]})").fetchone()[2]
                    for index in db.execute(f"PRAGMA index_list({table})")
                    if not index[4]  # partial
                ]
                primary = [r[1] for r in db.execute(f"PRAGMA table_info({table})") if r[5] == 1]
                assert ref[3] in leading or primary == [ref[3]], f"{table}.{ref[3]}"


def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StateError, match="Upgrade al-pipeline"):
        State(path)


def test_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    item = NewItem("a.png", ImageFile("0" * 64, 1, 1, "PNG", 1, 1), label="with_mask")
    with State(tmp_path / "s.sqlite3") as state:
        pool = state.add_pool("p", tmp_path)
        with pytest.raises(RuntimeError), state.atomic():
            state.insert_items(pool.id, [item])
            raise RuntimeError("killed mid-way")
        assert state.item_count() == 0
        with state.atomic():
            state.insert_items(pool.id, [item])
        assert state.item_count() == 1 and state.current_label(1) == "with_mask"


def _item(n: int, label: str | None = None) -> NewItem:
    return NewItem(f"{n}.png", ImageFile(f"{n:064d}", 1, 1, "PNG", 1, 1), label=label)


def test_atomic_blocks_nest_as_savepoints(tmp_path: Path) -> None:
    """An inner block that fails takes back its own writes only; the outer one decides
    for everything, and a failure there takes back the inner block's writes too."""
    with State(tmp_path / "s.sqlite3") as state:
        pool = state.add_pool("p", tmp_path)
        with state.atomic():
            state.insert_items(pool.id, [_item(1)])
            with pytest.raises(RuntimeError), state.atomic():
                state.insert_items(pool.id, [_item(2)])
                raise RuntimeError("inner failure, caught")
            with state.atomic():
                state.insert_items(pool.id, [_item(3)])
        assert [i.path.name for i in state.items_in_pool("p")] == ["1.png", "3.png"]

        with pytest.raises(RuntimeError), state.atomic():
            with state.atomic():
                state.insert_items(pool.id, [_item(4)])
            raise RuntimeError("outer failure")
        assert state.item_count() == 2

        with state.atomic():  # the nesting depth was restored after each failure
            state.insert_items(pool.id, [_item(5)])
        assert state.item_count() == 3


def test_a_second_process_sees_nothing_of_an_open_atomic_block(tmp_path: Path) -> None:
    with State(tmp_path / "s.sqlite3") as state:
        pool = state.add_pool("p", tmp_path)
        with state.atomic(), state.atomic():
            state.insert_items(pool.id, [_item(1)])
            with sqlite3.connect(tmp_path / "s.sqlite3") as other:
                assert other.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 0
        with sqlite3.connect(tmp_path / "s.sqlite3") as other:
            assert other.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 1


def test_pulled_labels_are_recorded_retracted_and_skipped(tmp_path: Path) -> None:
    with State(tmp_path / "s.sqlite3") as state:
        pool = state.add_pool("p", tmp_path)
        state.insert_items(pool.id, [_item(n) for n in (1, 2, 3)])
        entries = [QueueEntry(n, n, "a", 0.6, 0.4) for n in (1, 2, 3)]
        round_id = state.start_round("margin", "labelstudio", RoundParams(), entries)
        first = [PulledLabel(1, "a", "human", "ann", "ls:1"), PulledLabel(2, "b", "human")]
        assert state.record_pulled(round_id, first, skipped=[3]) == 2
        assert state.record_pulled(round_id, first) == 0  # the same labels: nothing new
        states = {q.item_id: q.state for q in state.queue(round_id)}
        assert states == {1: "labelled", 2: "labelled", 3: "skipped"}

        assert state.record_pulled(round_id, [], retracted=[1]) == 0
        assert state.current_label(1) is None and state.current_label(2) == "b"
        assert {q.item_id: q.state for q in state.queue(round_id)}[1] == "pending"
        history = state.label_history(1)
        assert len(history) == 1 and history[0].retired_at is not None

        changed = [PulledLabel(1, "b", "human", "rev", "ls:2")]
        assert state.record_pulled(round_id, changed) == 1
        assert state.current_label(1) == "b"
        assert [h.annotator for h in state.label_history(1)] == ["ann", "rev"]


def test_latest_label_is_current_and_history_is_kept(tmp_path: Path) -> None:
    with State(tmp_path / "s.sqlite3") as state:
        pool = state.add_pool("p", tmp_path)
        with state.atomic():
            state.insert_items(pool.id, [NewItem("a.png", ImageFile("1" * 64, 1, 1, "PNG", 1, 1))])
            state.insert_label(1, "with_mask", "human", annotator="ann@example.com")
            state.insert_label(1, "without_mask", "human", annotator="rev@example.com")
        assert state.current_label(1) == "without_mask"


def _refuses_unchanged(cli: CliRunner, config: Config, says: str) -> None:
    """``pool stats`` refuses the database with one line and leaves its bytes as they were
    (no journal mode switched, no -wal file made)."""
    before = {p.name: p.read_bytes() for p in config.root.glob("state.sqlite3*")}
    result = cli.invoke(app, ["-w", str(config.root), "pool", "stats"])
    assert result.exit_code == 1, result.output
    assert says in result.output and "Traceback" not in result.output
    assert {p.name: p.read_bytes() for p in config.root.glob("state.sqlite3*")} == before


def _replace_database(config: Config, build: Callable[[sqlite3.Connection], object]) -> None:
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
    cli: CliRunner,
    workspace: Config,
    monkeypatch: pytest.MonkeyPatch,
    make_images: Callable[..., list[Path]],
) -> None:
    """Another program (a sqlite3 shell, say) holds a write transaction for longer than the
    busy timeout: the command says so and changes nothing."""
    import al_pipeline.store.db as db_module

    monkeypatch.setattr(db_module, "BUSY_SECONDS", 1.0)
    make_images(workspace.pools_dir / "photos", 2)
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


def test_lookups_by_many_ids_cross_the_parameter_limit(tmp_path: Path) -> None:
    """SQLite binds a limited number of parameters per statement; lookups go in chunks."""
    count = 1_234
    with State(tmp_path / "s.sqlite3") as state:
        pool = state.add_pool("p", tmp_path)
        items = [_item(n, "a") for n in range(count)]
        state.insert_items(pool.id, [replace(item, hidden_label=True) for item in items])
        ids = [i.item_id for i in state.items_in_pool("p")]
        assert len(state.oracle_labels(ids)) == count
        state.record_pulled(None, [PulledLabel(i, "b", "human") for i in ids])
        assert len(state.current_labels(ids)) == count


# The definitions the column-wise queries must agree with: one join per item.
SELECTABLE = (
    "SELECT i.id FROM items i WHERE i.status = 'pool' AND i.flag IS NULL"
    " AND (i.split IS NULL OR i.split = 'train')"
    " AND NOT EXISTS (SELECT 1 FROM current_labels l WHERE l.item_id = i.id) ORDER BY i.id"
)
STATS = (
    "SELECT p.name, l.class_name, COUNT(*),"
    " SUM(l.item_id IS NOT NULL AND (i.split IS NULL OR i.split = 'train')),"
    " SUM(i.split = 'test'), SUM(i.status = 'queued')"
    " FROM items i JOIN pools p ON p.id = i.pool_id"
    " LEFT JOIN current_labels l ON l.item_id = i.id"
    " GROUP BY p.name, l.class_name ORDER BY p.id, l.class_name"
)


def test_selectable_items_and_pool_stats_agree_with_a_join_per_item(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with State(path) as state:
        a, b = state.add_pool("a", tmp_path), state.add_pool("b", tmp_path)
        state.insert_items(a.id, [_item(n, "x" if n % 3 == 0 else None) for n in range(1, 13)])
        state.insert_items(b.id, [_item(n, "y" if n % 2 else None) for n in range(20, 26)])
        state.assign_split({3: "test", 6: "train", 14: "test"})
        queued = [QueueEntry(n, n, None, None, None) for n in (1, 2, 4, 5, 15)]
        round_id = state.start_round("margin", "oracle", RoundParams(), queued)
        state.record_pulled(round_id, [PulledLabel(1, "y", "human")], skipped=[2])
        state.close_round(round_id)
        state.start_round("margin", "oracle", RoundParams(), [QueueEntry(7, 0, None, None, None)])
        selectable, stats = state.selectable(), state.pool_stats()
    with sqlite3.connect(path) as db:
        expected_ids = [r[0] for r in db.execute(SELECTABLE)]
        expected_stats = [
            (p, c, n, tr or 0, te or 0, q or 0) for p, c, n, tr, te, q in db.execute(STATS)
        ]
    db.close()
    assert selectable.ids.tolist() == expected_ids and len(expected_ids) > 0
    assert [(s.pool, s.class_name, s.items, s.train, s.test, s.queued) for s in stats] == (
        expected_stats
    )


def test_pool_stats_lists_a_pool_that_has_no_items(tmp_path: Path) -> None:
    with State(tmp_path / "s.sqlite3") as state:
        a = state.add_pool("a", tmp_path)
        state.add_pool("empty", tmp_path)
        state.insert_items(a.id, [_item(1, None)])
        stats = state.pool_stats()
    assert [(s.pool, s.class_name, s.items) for s in stats] == [("a", None, 1), ("empty", None, 0)]


def test_migration_7_keys_the_items_a_workspace_already_has(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    with sqlite3.connect(path) as db:
        for number, script in enumerate(MIGRATIONS[:6], start=1):
            db.executescript(f"{script}\nPRAGMA user_version = {number};")
        db.execute("INSERT INTO pools (name, root, created_at) VALUES ('p', '.', 'now')")
        db.execute(
            "INSERT INTO items (pool_id, relpath, sha256, size, mtime_ns, format, width, height,"
            " added_at) VALUES (1, 'a.png', ?, 1, 1, 'PNG', 1, 1, 'now')",
            ("f" * 16 + "0" * 48,),
        )
    db.close()
    with State(path) as state:
        assert state.version == SCHEMA_VERSION
        assert state.selectable().keys.tolist() == [sha_key("f" * 64)] == [2**63 - 1]


def test_items_inserted_one_by_one_are_keyed_in_one_block_per_transaction(
    tmp_path: Path,
) -> None:
    """Ingestion inserts a file at a time; the keys a round reads stay one block per
    transaction, and a rolled-back savepoint takes its items' keys with it."""
    path = tmp_path / "s.sqlite3"
    with State(path) as state:
        pool = state.add_pool("p", tmp_path)
        with state.atomic():
            for n in range(1, 6):
                state.insert_items(pool.id, [_item(n)])
            with pytest.raises(RuntimeError), state.atomic():
                state.insert_items(pool.id, [_item(6)])
                raise RuntimeError("this file failed")
            state.insert_items(pool.id, [_item(7)])
        with pytest.raises(RuntimeError), state.atomic():
            state.insert_items(pool.id, [_item(8)])
            raise RuntimeError("killed")
        keys = state.item_keys()
        assert keys.ids.tolist() == [i.item_id for i in state.items_in_pool("p")]
        assert keys.keys.tolist() == [sha_key(f"{n:064d}") for n in (1, 2, 3, 4, 5, 7)]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM item_keys").fetchone()[0] == 1
    db.close()
