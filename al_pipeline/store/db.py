"""The database under every store module: connection, schema migrations, and ``atomic()``
transactions that nest.

The store is the only package that contains SQL. Writes happen inside
:meth:`Database.atomic` (``BEGIN IMMEDIATE`` ... ``COMMIT``), so a command killed at any
point leaves the database as it was before the interrupted transaction, and re-running
continues.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

import numpy as np

from al_pipeline.errors import StateError, explain

MIGRATIONS: tuple[str, ...] = (
    # 1: the initial schema.
    """
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE pools (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        root TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE items (
        id INTEGER PRIMARY KEY,
        pool_id INTEGER NOT NULL REFERENCES pools(id),
        relpath TEXT NOT NULL,
        sha256 TEXT NOT NULL UNIQUE,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        format TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        source TEXT,
        status TEXT NOT NULL DEFAULT 'pool' CHECK (status IN ('pool', 'queued')),
        split TEXT CHECK (split IN ('train', 'test')),
        added_at TEXT NOT NULL,
        UNIQUE (pool_id, relpath)
    );
    CREATE TABLE item_hashes (
        item_id INTEGER PRIMARY KEY REFERENCES items(id),
        canonical INTEGER NOT NULL,
        probes BLOB NOT NULL
    );
    CREATE TABLE rounds (
        id INTEGER PRIMARY KEY,
        strategy TEXT NOT NULL,
        size INTEGER NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('open', 'closed')),
        params TEXT NOT NULL DEFAULT '{}',
        opened_at TEXT NOT NULL,
        closed_at TEXT
    );
    CREATE UNIQUE INDEX rounds_one_open ON rounds(status) WHERE status = 'open';
    CREATE TABLE labels (
        id INTEGER PRIMARY KEY,
        item_id INTEGER NOT NULL REFERENCES items(id),
        class_name TEXT NOT NULL,
        source TEXT NOT NULL CHECK (source IN ('import', 'human', 'oracle')),
        annotator TEXT,
        external_id TEXT,
        round_id INTEGER REFERENCES rounds(id),
        created_at TEXT NOT NULL,
        retired_at TEXT
    );
    CREATE INDEX labels_active ON labels(item_id) WHERE retired_at IS NULL;
    CREATE TABLE queue (
        round_id INTEGER NOT NULL REFERENCES rounds(id),
        item_id INTEGER NOT NULL REFERENCES items(id),
        position INTEGER NOT NULL,
        predicted_class TEXT,
        confidence REAL,
        score REAL,
        external_id TEXT,
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'labelled', 'returned', 'skipped')),
        PRIMARY KEY (round_id, item_id)
    );
    CREATE TABLE checkpoints (
        id INTEGER PRIMARY KEY,
        tag TEXT NOT NULL UNIQUE,
        round_id INTEGER REFERENCES rounds(id),
        path TEXT NOT NULL,
        backbone TEXT NOT NULL,
        weights_digest TEXT NOT NULL,
        image_size INTEGER NOT NULL,
        labelled_count INTEGER NOT NULL,
        meta TEXT NOT NULL DEFAULT '{}',
        created_at TEXT NOT NULL
    );
    CREATE TABLE metrics (
        id INTEGER PRIMARY KEY,
        checkpoint_id INTEGER REFERENCES checkpoints(id),
        round_id INTEGER REFERENCES rounds(id),
        name TEXT NOT NULL,
        value REAL,
        data TEXT,
        created_at TEXT NOT NULL
    );
    CREATE VIEW current_labels AS
        SELECT l.* FROM labels l
        WHERE l.retired_at IS NULL
          AND l.id = (SELECT MAX(id) FROM labels x
                      WHERE x.item_id = l.item_id AND x.retired_at IS NULL);
    """,
    # 2: the embedding cache index (the features live in one file per digest).
    """
    CREATE TABLE embedding_sets (
        digest TEXT PRIMARY KEY,
        backbone TEXT NOT NULL,
        image_size INTEGER NOT NULL,
        weights_digest TEXT NOT NULL,
        dim INTEGER NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TABLE embedding_rows (
        digest TEXT NOT NULL REFERENCES embedding_sets(digest),
        sha256 TEXT NOT NULL,
        row INTEGER NOT NULL,
        PRIMARY KEY (digest, sha256)
    );
    """,
    # 3: hidden labels for the oracle (simulation), and round bookkeeping.
    """
    CREATE TABLE oracle_labels (
        item_id INTEGER PRIMARY KEY REFERENCES items(id),
        class_name TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    ALTER TABLE rounds ADD COLUMN labeller TEXT NOT NULL DEFAULT 'oracle';
    ALTER TABLE items ADD COLUMN flag TEXT;
    """,
    # 4: our mark in the file header, and checksums that make the embedding cache verifiable.
    f"""
    PRAGMA application_id = {0x616C7070};
    ALTER TABLE embedding_rows ADD COLUMN crc INTEGER;
    ALTER TABLE embedding_sets ADD COLUMN file_size INTEGER;
    ALTER TABLE embedding_sets ADD COLUMN file_mtime_ns INTEGER;
    """,
    # 5: the queue keeps the strategy's utility of each pick (it kept the confidence twice).
    """
    ALTER TABLE queue RENAME COLUMN score TO utility;
    UPDATE queue SET utility = NULL;
    """,
    # 6: items whose annotators disagree with no majority, as the last pull of a round saw.
    """
    CREATE TABLE ties (
        round_id INTEGER NOT NULL REFERENCES rounds(id),
        item_id INTEGER NOT NULL REFERENCES items(id),
        PRIMARY KEY (round_id, item_id)
    );
    """,
    # 7: what a round reads at 10M items, as arrays by blocks rather than a row per item:
    # the content key (see sha_key) of every item, filled in by _key_items, and the
    # embedding cache's index (the old one moves into blocks when its cache is next
    # opened), with the state of the shard files Ray workers write. The partial index
    # finds the few items a round may not pick.
    """
    CREATE TABLE item_keys (
        first_id INTEGER PRIMARY KEY,
        ids BLOB NOT NULL,
        keys BLOB NOT NULL
    );
    CREATE TABLE embedding_blocks (
        digest TEXT NOT NULL REFERENCES embedding_sets(digest),
        first_row INTEGER NOT NULL,
        keys BLOB NOT NULL,
        crcs BLOB NOT NULL,
        PRIMARY KEY (digest, first_row)
    );
    CREATE TABLE embedding_shards (
        digest TEXT NOT NULL REFERENCES embedding_sets(digest),
        shard INTEGER NOT NULL,
        file_size INTEGER NOT NULL,
        file_mtime_ns INTEGER NOT NULL,
        PRIMARY KEY (digest, shard)
    );
    CREATE INDEX items_held ON items(id)
        WHERE status <> 'pool' OR flag IS NOT NULL OR split IS 'test';
    """,
    # 8: every table that refers to items, indexed by item: deleting an item (al pool
    # remove) makes SQLite look for rows that refer to it, a scan of each table per item
    # without these (8,000 items took 3.7 s, and the time grows as the square).
    """
    CREATE INDEX labels_item ON labels(item_id);
    CREATE INDEX queue_item ON queue(item_id);
    CREATE INDEX ties_item ON ties(item_id);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
APPLICATION_ID = 0x616C7070  # "alpp": written by migration 4
SQLITE_HEADER = b"SQLite format 3\x00"
# How long a write waits for another process's transaction before giving up.
IN_CHUNK = 500
BUSY_SECONDS = 60.0


def sha_key(sha256: str) -> int:
    """The first 64 bits of a hex content hash, as a signed 64-bit integer.

    Items are matched to cached features by this key, as plain integers. Two different
    images share it with a chance of about 1 in 370,000 among 10M items (a birthday bound
    of n^2 / 2^65).
    """
    return int(sha256[:16], 16) - (1 << 63)


def insert_key_block(db: sqlite3.Connection, ids: Sequence[int], shas: Sequence[str]) -> None:
    """Record the content keys of items just inserted, as one block."""
    if ids:
        db.execute(
            "INSERT INTO item_keys (first_id, ids, keys) VALUES (?, ?, ?)",
            (
                ids[0],
                np.array(ids, np.int64).tobytes(),
                np.array([sha_key(sha) for sha in shas], np.int64).tobytes(),
            ),
        )


def _key_items(db: sqlite3.Connection) -> None:
    """Migration 7's second step: the content keys of the items already there."""
    last = 0
    while rows := db.execute(
        "SELECT id, sha256 FROM items WHERE id > ? ORDER BY id LIMIT 100000", (last,)
    ).fetchall():
        insert_key_block(db, [r[0] for r in rows], [r[1] for r in rows])
        last = rows[-1][0]


# Steps in Python that follow a migration's script, in the same transaction.
MIGRATION_STEPS: dict[int, Callable[[sqlite3.Connection], None]] = {7: _key_items}


def _tables_by_version() -> list[frozenset[str]]:
    """The tables a database of each schema version has (index = version)."""
    memory = sqlite3.connect(":memory:")
    found = [frozenset[str]()]
    for script in MIGRATIONS:
        memory.executescript(script)
        rows = memory.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        found.append(frozenset(str(r[0]) for r in rows))
    memory.close()
    return found


_TABLES = _tables_by_version()


def now() -> str:
    """UTC timestamp in ISO 8601, as stored in every ``*_at`` column."""
    return datetime.now(UTC).isoformat(timespec="seconds")


class Database:
    """One open state database. The store's other classes add queries to it, one concern
    each, and :class:`~al_pipeline.store.state.State` combines them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._depth = 0  # how many atomic() blocks are open
        # Items inserted in the open transaction, keyed in one block when it commits.
        self._new_items: list[tuple[int, str]] = []
        _check_header(path)
        try:
            self._db = sqlite3.connect(path, isolation_level=None, timeout=BUSY_SECONDS)
        except sqlite3.Error as exc:
            raise StateError(f"Cannot open the state database {path}: {exc}.") from exc
        try:
            self._open()
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        """Check that the file is ours and not newer, and only then change anything."""
        self._db.row_factory = sqlite3.Row
        try:
            self._check_ours()
            self._db.execute("PRAGMA foreign_keys = ON")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and explain(exc) is not None:
                raise
            raise StateError(
                f"{self.path} is not a readable al-pipeline state database ({exc}). Restore "
                "it from a backup, or move it away and run 'al init' in a new folder."
            ) from exc

    def _check_ours(self) -> None:
        version = self.version
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{self.path} has schema version {version}, newer than this al-pipeline "
                f"understands ({SCHEMA_VERSION}). Upgrade al-pipeline; the file was not changed."
            )
        application = int(self._db.execute("PRAGMA application_id").fetchone()[0])
        tables = {
            str(r[0])
            for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if application not in (0, APPLICATION_ID) or (version == 0 and tables):
            raise StateError(
                f"{self.path} is a SQLite database of another application, not al-pipeline "
                "state; it was not changed. Point --workspace at an al-pipeline workspace, or "
                "move that file away."
            )
        missing = sorted(_TABLES[version] - tables)
        if missing:
            raise StateError(
                f"{self.path} is damaged: table(s) {', '.join(missing)} are missing. Restore "
                "it from a backup; the file was not changed."
            )

    def close(self) -> None:
        self._db.close()

    def backup(self, path: Path) -> None:
        """A consistent copy of the whole database at ``path``."""
        target = sqlite3.connect(path)
        try:
            self._db.backup(target)
        finally:
            target.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Run a block atomically: all of its writes land, or none do.

        Blocks nest: the outermost one is the transaction (``BEGIN IMMEDIATE``, so a
        writer waits for the database lock up front, not halfway through), an inner one a
        savepoint. An inner block that fails rolls back its own writes only; the error
        still propagates, and the outer block decides. The content keys of the items a
        transaction inserted are written as one block just before it commits.
        """
        depth = self._depth
        mark = len(self._new_items)
        self._db.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT s{depth}")
        self._depth = depth + 1
        try:
            yield
            if depth == 0 and self._new_items:
                ids, shas = zip(*self._new_items, strict=True)
                insert_key_block(self._db, ids, shas)
                self._new_items.clear()
            self._db.execute("COMMIT" if depth == 0 else f"RELEASE s{depth}")
        except BaseException:
            del self._new_items[mark:]
            if depth:
                self._db.execute(f"ROLLBACK TO s{depth}")
                self._db.execute(f"RELEASE s{depth}")
            elif self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
        finally:
            self._depth = depth

    def _rows_in(self, sql: str, ids: Sequence[int]) -> Iterator[sqlite3.Row]:
        """Rows of ``sql``, whose ``{}`` is an ``IN`` list, for ``ids`` in chunks: SQLite
        caps how many parameters one statement binds."""
        for start in range(0, len(ids), IN_CHUNK):
            chunk = list(ids[start : start + IN_CHUNK])
            yield from self._db.execute(sql.format(",".join("?" * len(chunk))), chunk)

    @property
    def version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self.version
        if current > SCHEMA_VERSION:
            raise StateError(
                f"{self.path} has schema version {current}, newer than this al-pipeline "
                f"understands ({SCHEMA_VERSION}). Upgrade al-pipeline."
            )
        for number in range(current + 1, SCHEMA_VERSION + 1):
            script = MIGRATIONS[number - 1]
            try:
                self._db.executescript(
                    f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};"
                )
                if number in MIGRATION_STEPS:
                    MIGRATION_STEPS[number](self._db)
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.atomic():
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def delete_meta(self, key: str) -> None:
        with self.atomic():
            self._db.execute("DELETE FROM meta WHERE key = ?", (key,))


def _check_header(path: Path) -> None:
    """Refuse a file that is not SQLite before SQLite touches it."""
    try:
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StateError(f"Cannot read the state database {path}: {exc.strerror}.") from exc
    if header and header != SQLITE_HEADER:
        raise StateError(
            f"{path} is not a SQLite database (the file was not changed). Restore it from a "
            "backup, or move it away and run 'al init' in a new folder."
        )
