"""The SQLite state store: schema, migrations and every query.

This is the only module that contains SQL. Writes happen inside :meth:`State.transaction`
(``BEGIN IMMEDIATE`` ... ``COMMIT``), so a command killed at any point leaves the
database as it was before the interrupted transaction, and re-running continues.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from al_pipeline.errors import StateError, explain
from al_pipeline.records import HistoryRow, Metrics

LABEL_SOURCES = ("import", "human", "oracle")

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
)
SCHEMA_VERSION = len(MIGRATIONS)
APPLICATION_ID = 0x616C7070  # "alpp": written by migration 4
SQLITE_HEADER = b"SQLite format 3\x00"
# How long a write waits for another process's transaction before giving up.
IN_CHUNK = 500
BUSY_SECONDS = 60.0


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


@dataclass(frozen=True)
class Pool:
    """A registered pool: a named root folder."""

    id: int
    name: str
    root: Path


@dataclass(frozen=True)
class NewItem:
    """An item about to be registered (its file has been validated)."""

    relpath: str
    sha256: str
    size: int
    mtime_ns: int
    format: str
    width: int
    height: int
    label: str | None = None
    source: str | None = None
    hidden_label: bool = False


@dataclass(frozen=True)
class KnownFile:
    """What the database remembers of a file at a pool path."""

    item_id: int
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class KnownItem:
    """The item registered at a pool path."""

    item_id: int
    sha256: str


@dataclass(frozen=True)
class SplitCandidate:
    """A labelled item as the test split sees it."""

    item_id: int
    path: Path
    label: str
    split: str | None
    source: str | None


@dataclass(frozen=True)
class ItemRef:
    """An item's id, content hash and path (relative to the workspace when inside it)."""

    item_id: int
    sha256: str
    path: Path


@dataclass(frozen=True)
class LabelledItem:
    """A labelled item with the facts training and evaluation need."""

    item_id: int
    sha256: str
    path: Path
    label: str


@dataclass(frozen=True)
class CachedRow:
    """Where an item's features are in a feature file, and their checksum (CRC-32)."""

    row: int
    crc: int | None


@dataclass(frozen=True)
class CheckpointRow:
    """A registered checkpoint."""

    id: int
    tag: str
    path: Path
    backbone: str
    image_size: int
    labelled_count: int
    meta: dict[str, Any]
    created_at: str
    round_id: int | None = None

    @property
    def metrics(self) -> Metrics | None:
        """Its held-out metrics, once evaluated."""
        return Metrics.stored(self.meta)


@dataclass(frozen=True)
class RoundRow:
    """A round of selection and labelling."""

    id: int
    strategy: str
    size: int
    status: str
    labeller: str
    params: dict[str, Any]
    opened_at: str
    closed_at: str | None


@dataclass(frozen=True)
class QueueEntry:
    """One item queued in a round, as written when the round starts."""

    item_id: int
    position: int
    predicted_class: str | None
    confidence: float | None
    score: float | None


@dataclass(frozen=True)
class QueuedItem:
    """A queued item with what a labeller needs to show it."""

    item_id: int
    sha256: str
    path: Path
    position: int
    predicted_class: str | None
    confidence: float | None
    score: float | None
    external_id: str | None
    state: str


@dataclass(frozen=True)
class PulledLabel:
    """A label a labeller brought back for a queued item."""

    item_id: int
    class_name: str
    source: str
    annotator: str | None = None
    external_id: str | None = None


@dataclass(frozen=True)
class PoolStats:
    """Counts for one pool and class (class ``None`` = unlabelled)."""

    pool: str
    class_name: str | None
    items: int
    train: int
    test: int
    queued: int


class State:
    """Handle on one workspace's state database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._depth = 0  # how many atomic() blocks are open
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

    def __enter__(self) -> State:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def atomic(self) -> Iterator[None]:
        """Run a block atomically: all of its writes land, or none do.

        Blocks nest: the outermost one is the transaction (``BEGIN IMMEDIATE``, so a
        writer waits for the database lock up front, not halfway through), an inner one a
        savepoint. An inner block that fails rolls back its own writes only; the error
        still propagates, and the outer block decides.
        """
        depth = self._depth
        self._db.execute("BEGIN IMMEDIATE" if depth == 0 else f"SAVEPOINT s{depth}")
        self._depth = depth + 1
        try:
            yield
            self._db.execute("COMMIT" if depth == 0 else f"RELEASE s{depth}")
        except BaseException:
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
            self._db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )

    # -- meta ---------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self.atomic():
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def delete_meta(self, key: str) -> None:
        with self.atomic():
            self._db.execute("DELETE FROM meta WHERE key = ?", (key,))

    # -- pools --------------------------------------------------------------------------

    def pool(self, name: str) -> Pool | None:
        row = self._db.execute("SELECT * FROM pools WHERE name = ?", (name,)).fetchone()
        return None if row is None else Pool(row["id"], row["name"], Path(row["root"]))

    def pools(self) -> list[Pool]:
        rows = self._db.execute("SELECT * FROM pools ORDER BY id").fetchall()
        return [Pool(r["id"], r["name"], Path(r["root"])) for r in rows]

    def add_pool(self, name: str, root: Path) -> Pool:
        with self.atomic():
            cursor = self._db.execute(
                "INSERT INTO pools (name, root, created_at) VALUES (?, ?, ?)",
                (name, str(root), now()),
            )
        return Pool(int(cursor.lastrowid or 0), name, root)

    # -- items --------------------------------------------------------------------------

    def known_files(self, pool_id: int) -> dict[str, KnownFile]:
        rows = self._db.execute(
            "SELECT id, relpath, size, mtime_ns FROM items WHERE pool_id = ?", (pool_id,)
        )
        return {r["relpath"]: KnownFile(r["id"], r["size"], r["mtime_ns"]) for r in rows}

    def item_by_sha256(self, sha256: str) -> int | None:
        row = self._db.execute("SELECT id FROM items WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else int(row[0])

    def item_at(self, pool_id: int, relpath: str) -> KnownItem | None:
        row = self._db.execute(
            "SELECT id, sha256 FROM items WHERE pool_id = ? AND relpath = ?", (pool_id, relpath)
        ).fetchone()
        return None if row is None else KnownItem(int(row[0]), str(row[1]))

    def touch_item(self, item_id: int, size: int, mtime_ns: int) -> None:
        """Record a registered file's new size and time (same content)."""
        with self.atomic():
            self._db.execute(
                "UPDATE items SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, item_id)
            )

    def current_label(self, item_id: int) -> str | None:
        row = self._db.execute(
            "SELECT class_name FROM current_labels WHERE item_id = ?", (item_id,)
        ).fetchone()
        return None if row is None else str(row[0])

    def insert_items(self, pool_id: int, items: Sequence[NewItem]) -> None:
        """Insert validated items (and their import labels), all or none."""
        with self.atomic():
            self._insert_items(pool_id, items)

    def _insert_items(self, pool_id: int, items: Sequence[NewItem]) -> None:
        stamp = now()
        for item in items:
            cursor = self._db.execute(
                "INSERT INTO items (pool_id, relpath, sha256, size, mtime_ns, format, width,"
                " height, source, added_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    pool_id,
                    item.relpath,
                    item.sha256,
                    item.size,
                    item.mtime_ns,
                    item.format,
                    item.width,
                    item.height,
                    item.source,
                    stamp,
                ),
            )
            item_id = int(cursor.lastrowid or 0)
            if item.label is not None and item.hidden_label:
                self._db.execute(
                    "INSERT INTO oracle_labels (item_id, class_name, created_at) VALUES (?, ?, ?)",
                    (item_id, item.label, stamp),
                )
            elif item.label is not None:
                self.insert_label(item_id, item.label, "import")

    def insert_label(
        self,
        item_id: int,
        class_name: str,
        source: str,
        annotator: str | None = None,
        external_id: str | None = None,
        round_id: int | None = None,
    ) -> None:
        """Record a label; earlier labels stay as history."""
        self._db.execute(
            "INSERT INTO labels (item_id, class_name, source, annotator, external_id,"
            " round_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (item_id, class_name, source, annotator, external_id, round_id, now()),
        )

    def items_in_pool(self, name: str) -> list[ItemRef]:
        rows = self._db.execute(
            "SELECT i.id, i.sha256, i.relpath, p.root FROM items i JOIN pools p"
            " ON p.id = i.pool_id WHERE p.name = ? ORDER BY i.id",
            (name,),
        )
        return [ItemRef(r["id"], r["sha256"], Path(r["root"]) / r["relpath"]) for r in rows]

    def item_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    # -- test split ---------------------------------------------------------------------

    def split_candidates(self) -> list[SplitCandidate]:
        """Every labelled item of the workspace, with its split (None = undecided)."""
        rows = self._db.execute(
            "SELECT i.id, i.relpath, i.split, i.source, p.root,"
            " COALESCE(l.class_name, o.class_name) AS class_name"
            " FROM items i JOIN pools p ON p.id = i.pool_id"
            " LEFT JOIN current_labels l ON l.item_id = i.id"
            " LEFT JOIN oracle_labels o ON o.item_id = i.id"
            " WHERE l.item_id IS NOT NULL OR o.item_id IS NOT NULL ORDER BY i.id"
        )
        return [
            SplitCandidate(
                r["id"], Path(r["root"]) / r["relpath"], r["class_name"], r["split"], r["source"]
            )
            for r in rows
        ]

    def near_dup_hashes(self, item_ids: Iterable[int]) -> dict[int, tuple[int, bytes]]:
        rows = self._rows_in("SELECT * FROM item_hashes WHERE item_id IN ({})", list(item_ids))
        return {r["item_id"]: (int(r["canonical"]), bytes(r["probes"])) for r in rows}

    def save_near_dup_hashes(self, hashes: dict[int, tuple[int, bytes]]) -> None:
        with self.atomic():
            self._db.executemany(
                "INSERT OR REPLACE INTO item_hashes (item_id, canonical, probes) VALUES (?, ?, ?)",
                [(item_id, canon, probes) for item_id, (canon, probes) in hashes.items()],
            )

    def assign_split(self, assignment: dict[int, str]) -> None:
        """Fix items' sides; test items with hidden labels get them revealed (evaluation
        needs them), in the same transaction."""
        with self.atomic():
            self._db.executemany(
                "UPDATE items SET split = ? WHERE id = ? AND split IS NULL",
                [(split, item_id) for item_id, split in assignment.items()],
            )
            self._db.execute(
                "INSERT INTO labels (item_id, class_name, source, annotator, created_at)"
                " SELECT o.item_id, o.class_name, 'import', 'test split', ? FROM oracle_labels o"
                " JOIN items i ON i.id = o.item_id WHERE i.split = 'test'"
                " AND NOT EXISTS (SELECT 1 FROM current_labels l WHERE l.item_id = o.item_id)",
                (now(),),
            )

    # -- training and evaluation sets ----------------------------------------------------

    def labelled_items(self, split: str) -> list[LabelledItem]:
        """Labelled items of the ``train`` side (no split or train) or the ``test`` side."""
        where = "i.split = 'test'" if split == "test" else "(i.split IS NULL OR i.split = 'train')"
        rows = self._db.execute(
            "SELECT i.id, i.sha256, i.relpath, p.root, l.class_name FROM items i"
            " JOIN pools p ON p.id = i.pool_id JOIN current_labels l ON l.item_id = i.id"
            f" WHERE {where} ORDER BY i.id"
        )
        return [
            LabelledItem(r["id"], r["sha256"], Path(r["root"]) / r["relpath"], r["class_name"])
            for r in rows
        ]

    # -- embedding cache index ----------------------------------------------------------

    def ensure_embedding_set(
        self, digest: str, backbone: str, image_size: int, weights_digest: str, dim: int
    ) -> None:
        with self.atomic():
            self._db.execute(
                "INSERT OR IGNORE INTO embedding_sets (digest, backbone, image_size,"
                " weights_digest, dim, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (digest, backbone, image_size, weights_digest, dim, now()),
            )

    def embedding_index(self, digest: str) -> dict[str, CachedRow]:
        """Every cached row of a feature file: content hash -> row and checksum."""
        rows = self._db.execute(
            "SELECT sha256, row, crc FROM embedding_rows WHERE digest = ?", (digest,)
        )
        return {r[0]: CachedRow(int(r[1]), None if r[2] is None else int(r[2])) for r in rows}

    def embedding_file_state(self, digest: str) -> tuple[int, int] | None:
        """(size, mtime_ns) of the feature file after this workspace last wrote it."""
        row = self._db.execute(
            "SELECT file_size, file_mtime_ns FROM embedding_sets WHERE digest = ?", (digest,)
        ).fetchone()
        return None if row is None or row[0] is None else (int(row[0]), int(row[1]))

    def add_embedding_rows(
        self,
        digest: str,
        rows: Sequence[tuple[str, int, int]],
        file_state: tuple[int, int] | None,
        drop: Sequence[str] = (),
    ) -> None:
        """Index ``(sha256, row, crc)`` rows (and forget the ``drop`` ones), and record the
        file's state after the write: one transaction."""
        with self.atomic():
            self._db.executemany(
                "DELETE FROM embedding_rows WHERE digest = ? AND sha256 = ?",
                [(digest, sha) for sha in drop],
            )
            self._db.executemany(
                "INSERT OR REPLACE INTO embedding_rows (digest, sha256, row, crc)"
                " VALUES (?, ?, ?, ?)",
                [(digest, sha, row, crc) for sha, row, crc in rows],
            )
            self._db.execute(
                "UPDATE embedding_sets SET file_size = ?, file_mtime_ns = ? WHERE digest = ?",
                (*(file_state or (None, None)), digest),
            )

    # -- checkpoints and metrics --------------------------------------------------------

    def add_checkpoint(
        self,
        tag: str,
        path: Path,
        backbone: str,
        image_size: int,
        labelled_count: int,
        meta: dict[str, Any],
        round_id: int | None = None,
        replace: bool = False,
    ) -> int:
        """Register a checkpoint; with ``replace``, one registered under the same tag (and
        its evaluations) gives way, in the same transaction."""
        with self.atomic():
            if replace:
                self._db.execute(
                    "DELETE FROM metrics WHERE checkpoint_id IN"
                    " (SELECT id FROM checkpoints WHERE tag = ?)",
                    (tag,),
                )
                self._db.execute("DELETE FROM checkpoints WHERE tag = ?", (tag,))
            cursor = self._db.execute(
                "INSERT INTO checkpoints (tag, round_id, path, backbone, weights_digest,"
                " image_size, labelled_count, meta, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    tag,
                    round_id,
                    str(path),
                    backbone,
                    str(meta.get("features_digest", "")),
                    image_size,
                    labelled_count,
                    json.dumps(meta),
                    now(),
                ),
            )
        return int(cursor.lastrowid or 0)

    def checkpoint(self, tag: str | None = None) -> CheckpointRow | None:
        """The checkpoint with ``tag``, or the latest one."""
        if tag is None:
            row = self._db.execute("SELECT * FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
        else:
            row = self._db.execute("SELECT * FROM checkpoints WHERE tag = ?", (tag,)).fetchone()
        return None if row is None else _checkpoint(row)

    def checkpoint_before(self, checkpoint_id: int) -> CheckpointRow | None:
        """The latest checkpoint registered before ``checkpoint_id``."""
        row = self._db.execute(
            "SELECT * FROM checkpoints WHERE id < ? ORDER BY id DESC LIMIT 1", (checkpoint_id,)
        ).fetchone()
        return None if row is None else _checkpoint(row)

    def checkpoints(self) -> list[CheckpointRow]:
        return [_checkpoint(r) for r in self._db.execute("SELECT * FROM checkpoints ORDER BY id")]

    def record_evaluation(self, checkpoint_id: int, metrics: Metrics) -> None:
        """Store an evaluation as the checkpoint's metrics (replacing an earlier one)."""
        with self.atomic():
            row = self._db.execute(
                "SELECT round_id, meta FROM checkpoints WHERE id = ?", (checkpoint_id,)
            ).fetchone()
            meta = json.loads(row["meta"]) | {"metrics": metrics.to_json()}
            self._db.execute(
                "UPDATE checkpoints SET meta = ? WHERE id = ?", (json.dumps(meta), checkpoint_id)
            )
            self._db.execute(
                "DELETE FROM metrics WHERE checkpoint_id = ? AND name = 'evaluation'",
                (checkpoint_id,),
            )
            self._db.execute(
                "INSERT INTO metrics (checkpoint_id, round_id, name, value, data, created_at)"
                " VALUES (?, ?, 'evaluation', ?, ?, ?)",
                (
                    checkpoint_id,
                    row["round_id"],
                    metrics.accuracy,
                    json.dumps(metrics.to_json()),
                    now(),
                ),
            )

    # -- rounds and the queue -----------------------------------------------------------

    def selectable_items(self) -> list[ItemRef]:
        """Unlabelled, non-test items not queued in a round and not flagged (skipped by a
        labeller): what a strategy picks from."""
        rows = self._db.execute(
            "SELECT i.id, i.sha256, i.relpath, p.root FROM items i JOIN pools p"
            " ON p.id = i.pool_id WHERE i.status = 'pool' AND i.flag IS NULL"
            " AND (i.split IS NULL OR i.split = 'train')"
            " AND NOT EXISTS (SELECT 1 FROM current_labels l WHERE l.item_id = i.id)"
            " ORDER BY i.id"
        )
        return [ItemRef(r["id"], r["sha256"], Path(r["root"]) / r["relpath"]) for r in rows]

    def open_round(self) -> RoundRow | None:
        row = self._db.execute("SELECT * FROM rounds WHERE status = 'open'").fetchone()
        return None if row is None else _round(row)

    def rounds(self) -> list[RoundRow]:
        return [_round(r) for r in self._db.execute("SELECT * FROM rounds ORDER BY id")]

    def start_round(
        self,
        strategy: str,
        labeller: str,
        params: dict[str, Any],
        entries: Sequence[QueueEntry],
    ) -> int:
        """Create the round, its queue, and mark the items queued: one transaction."""
        with self.atomic():
            cursor = self._db.execute(
                "INSERT INTO rounds (strategy, size, status, labeller, params, opened_at)"
                " VALUES (?, ?, 'open', ?, ?, ?)",
                (strategy, len(entries), labeller, json.dumps(params), now()),
            )
            round_id = int(cursor.lastrowid or 0)
            self._db.executemany(
                "INSERT INTO queue (round_id, item_id, position, predicted_class, confidence,"
                " score) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (round_id, e.item_id, e.position, e.predicted_class, e.confidence, e.score)
                    for e in entries
                ],
            )
            self._db.executemany(
                "UPDATE items SET status = 'queued' WHERE id = ?", [(e.item_id,) for e in entries]
            )
        return round_id

    def queue(self, round_id: int) -> list[QueuedItem]:
        rows = self._db.execute(
            "SELECT q.*, i.sha256, i.relpath, p.root FROM queue q JOIN items i"
            " ON i.id = q.item_id JOIN pools p ON p.id = i.pool_id WHERE q.round_id = ?"
            " ORDER BY q.position",
            (round_id,),
        )
        return [
            QueuedItem(
                r["item_id"],
                r["sha256"],
                Path(r["root"]) / r["relpath"],
                r["position"],
                r["predicted_class"],
                r["confidence"],
                r["score"],
                r["external_id"],
                r["state"],
            )
            for r in rows
        ]

    def set_external_ids(self, round_id: int, ids: dict[int, str]) -> None:
        with self.atomic():
            self._db.executemany(
                "UPDATE queue SET external_id = ? WHERE round_id = ? AND item_id = ?",
                [(external, round_id, item_id) for item_id, external in ids.items()],
            )

    def hidden_items(self) -> dict[int, str]:
        """Selectable items whose label only the oracle knows, with that label."""
        rows = self._db.execute(
            "SELECT o.item_id, o.class_name FROM oracle_labels o JOIN items i ON i.id = o.item_id"
            " WHERE i.status = 'pool' AND (i.split IS NULL OR i.split = 'train')"
            " AND NOT EXISTS (SELECT 1 FROM current_labels l WHERE l.item_id = o.item_id)"
            " ORDER BY o.item_id"
        )
        return {int(r[0]): str(r[1]) for r in rows}

    def oracle_labels(self, item_ids: Sequence[int]) -> dict[int, str]:
        sql = "SELECT item_id, class_name FROM oracle_labels WHERE item_id IN ({})"
        return {int(r["item_id"]): str(r["class_name"]) for r in self._rows_in(sql, item_ids)}

    def record_pulled(
        self,
        round_id: int | None,
        labels: Sequence[PulledLabel],
        skipped: Sequence[int] = (),
        retracted: Sequence[int] = (),
    ) -> int:
        """Write pulled labels at once (one transaction); a label already current for an item
        is not written twice. ``retracted`` items lose their current label (it stays in the
        history, retired) and are pending again in the round. Returns how many labels were
        new."""
        written = 0
        with self.atomic():
            for item_id in retracted:
                self._db.execute(
                    "UPDATE labels SET retired_at = ? WHERE item_id = ? AND retired_at IS NULL",
                    (now(), item_id),
                )
                self._db.execute(
                    "UPDATE queue SET state = 'pending' WHERE round_id = ? AND item_id = ?",
                    (round_id, item_id),
                )
            for label in labels:
                current = self._db.execute(
                    "SELECT class_name, external_id FROM current_labels WHERE item_id = ?",
                    (label.item_id,),
                ).fetchone()
                if current is None or tuple(current) != (label.class_name, label.external_id):
                    self.insert_label(
                        label.item_id,
                        label.class_name,
                        label.source,
                        label.annotator,
                        label.external_id,
                        round_id,
                    )
                    written += 1
                self._db.execute(
                    "UPDATE queue SET state = 'labelled' WHERE round_id = ? AND item_id = ?",
                    (round_id, label.item_id),
                )
            for item_id in skipped:
                self._db.execute(
                    "UPDATE queue SET state = 'skipped' WHERE round_id = ? AND item_id = ?",
                    (round_id, item_id),
                )
                self._db.execute("UPDATE items SET flag = 'skipped' WHERE id = ?", (item_id,))
        return written

    def current_labels(self, item_ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
        """``item_id -> (class, external id)`` of the items' current labels."""
        sql = "SELECT item_id, class_name, external_id FROM current_labels WHERE item_id IN ({})"
        return {
            r["item_id"]: (r["class_name"], r["external_id"]) for r in self._rows_in(sql, item_ids)
        }

    def label_history(self, item_id: int) -> list[dict[str, Any]]:
        """Every label an item has had, oldest first, retired ones included."""
        rows = self._db.execute(
            "SELECT class_name, source, annotator, external_id, round_id, created_at,"
            " retired_at FROM labels WHERE item_id = ? ORDER BY id",
            (item_id,),
        )
        return [dict(r) for r in rows]

    def round(self, round_id: int) -> RoundRow | None:
        row = self._db.execute("SELECT * FROM rounds WHERE id = ?", (round_id,)).fetchone()
        return None if row is None else _round(row)

    def clear_external_ids(self, round_id: int) -> None:
        """Forget where a round's items were pushed (their tasks are gone), to push again."""
        with self.atomic():
            self._db.execute("UPDATE queue SET external_id = NULL WHERE round_id = ?", (round_id,))

    def close_round(self, round_id: int) -> None:
        """Return unlabelled queued items to the pool and close the round: one transaction."""
        with self.atomic():
            self._db.execute(
                "UPDATE queue SET state = 'returned' WHERE round_id = ? AND state = 'pending'",
                (round_id,),
            )
            self._db.execute(
                "UPDATE items SET status = 'pool' WHERE id IN"
                " (SELECT item_id FROM queue WHERE round_id = ?)",
                (round_id,),
            )
            self._db.execute(
                "UPDATE rounds SET status = 'closed', closed_at = ? WHERE id = ?",
                (now(), round_id),
            )

    def round_checkpoint(self, round_id: int) -> CheckpointRow | None:
        row = self._db.execute(
            "SELECT * FROM checkpoints WHERE round_id = ? ORDER BY id DESC LIMIT 1", (round_id,)
        ).fetchone()
        return None if row is None else _checkpoint(row)

    def label_counts(self) -> dict[str, int]:
        """Current labels per class on the training side."""
        rows = self._db.execute(
            "SELECT l.class_name, COUNT(*) FROM current_labels l JOIN items i ON i.id = l.item_id"
            " WHERE i.split IS NULL OR i.split = 'train' GROUP BY l.class_name"
        )
        return {str(r[0]): int(r[1]) for r in rows}

    # -- history ------------------------------------------------------------------------

    def save_history(self, round_id: int | None, row: HistoryRow) -> None:
        """Store a round's history row (``None``: round 0, the starting point), replacing
        an earlier one of the same round."""
        with self.atomic():
            self._db.execute(
                "DELETE FROM metrics WHERE round_id IS ? AND name = 'history'", (round_id,)
            )
            self._db.execute(
                "INSERT INTO metrics (round_id, name, value, data, created_at)"
                " VALUES (?, 'history', ?, ?, ?)",
                (round_id, row.accuracy, json.dumps(row.to_json()), now()),
            )

    def history(self) -> list[HistoryRow]:
        rows = self._db.execute("SELECT data FROM metrics WHERE name = 'history' ORDER BY round_id")
        return [HistoryRow.from_json(json.loads(r[0])) for r in rows]

    # -- stats --------------------------------------------------------------------------

    def pool_stats(self) -> list[PoolStats]:
        rows = self._db.execute(
            "SELECT p.name AS pool, l.class_name AS class_name, COUNT(*) AS items,"
            " SUM(l.item_id IS NOT NULL AND (i.split IS NULL OR i.split = 'train')) AS train,"
            " SUM(i.split = 'test') AS test,"
            " SUM(i.status = 'queued') AS queued"
            " FROM items i JOIN pools p ON p.id = i.pool_id"
            " LEFT JOIN current_labels l ON l.item_id = i.id"
            " GROUP BY p.name, l.class_name ORDER BY p.id, l.class_name"
        )
        return [
            PoolStats(
                r["pool"],
                r["class_name"],
                r["items"],
                r["train"] or 0,
                r["test"] or 0,
                r["queued"] or 0,
            )
            for r in rows
        ]


def _round(row: sqlite3.Row) -> RoundRow:
    return RoundRow(
        row["id"],
        row["strategy"],
        row["size"],
        row["status"],
        row["labeller"],
        json.loads(row["params"]),
        row["opened_at"],
        row["closed_at"],
    )


def _checkpoint(row: sqlite3.Row) -> CheckpointRow:
    return CheckpointRow(
        row["id"],
        row["tag"],
        Path(row["path"]),
        row["backbone"],
        row["image_size"],
        row["labelled_count"],
        json.loads(row["meta"]),
        row["created_at"],
        row["round_id"],
    )


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


def open_state(path: Path) -> State:
    """Open (creating and migrating as needed) the state database at ``path``."""
    return State(path)
