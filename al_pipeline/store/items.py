"""Pools and their items: registration, the test split, and the sets training and
selection read."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from al_pipeline.errors import PipelineError
from al_pipeline.store.db import now
from al_pipeline.store.labels import Labels


@dataclass(frozen=True)
class PoolRow:
    """A registered pool: a named root folder."""

    id: int
    name: str
    root: Path


@dataclass(frozen=True)
class ImageFile:
    """A validated image file, as ingestion found it and the store records it."""

    sha256: str
    size: int
    mtime_ns: int
    format: str
    width: int
    height: int


@dataclass(frozen=True)
class NewItem:
    """An item about to be registered (its file has been validated)."""

    relpath: str
    file: ImageFile
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
class PoolStats:
    """Counts for one pool and class (class ``None`` = unlabelled)."""

    pool: str
    class_name: str | None
    items: int
    train: int
    test: int
    queued: int


class Items(Labels):
    """Queries on pools and items (an item's import label is written with it)."""

    def pool(self, name: str) -> PoolRow | None:
        row = self._db.execute("SELECT * FROM pools WHERE name = ?", (name,)).fetchone()
        return None if row is None else PoolRow(row["id"], row["name"], Path(row["root"]))

    def pools(self) -> list[PoolRow]:
        rows = self._db.execute("SELECT * FROM pools ORDER BY id").fetchall()
        return [PoolRow(r["id"], r["name"], Path(r["root"])) for r in rows]

    def add_pool(self, name: str, root: Path) -> PoolRow:
        with self.atomic():
            cursor = self._db.execute(
                "INSERT INTO pools (name, root, created_at) VALUES (?, ?, ?)",
                (name, str(root), now()),
            )
        return PoolRow(int(cursor.lastrowid or 0), name, root)

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
                    item.file.sha256,
                    item.file.size,
                    item.file.mtime_ns,
                    item.file.format,
                    item.file.width,
                    item.file.height,
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

    def items_in_pool(self, name: str) -> list[ItemRef]:
        rows = self._db.execute(
            "SELECT i.id, i.sha256, i.relpath, p.root FROM items i JOIN pools p"
            " ON p.id = i.pool_id WHERE p.name = ? ORDER BY i.id",
            (name,),
        )
        return [ItemRef(r["id"], r["sha256"], Path(r["root"]) / r["relpath"]) for r in rows]

    def item_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

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
            self._reveal_test_labels()

    def redraw_split(self, assignment: dict[int, str]) -> None:
        """Give items new sides, in a workspace whose every label is hidden for the oracle
        (a simulation's copy): labels revealed for the old test side are hidden again, and
        the new test side's revealed. Refuses when any label came from elsewhere, since a
        split that has been trained on must never change."""
        with self.atomic():
            self.check_redrawable()
            self._db.execute("DELETE FROM labels WHERE annotator = 'test split'")
            self._db.executemany(
                "UPDATE items SET split = ? WHERE id = ?",
                [(split, item_id) for item_id, split in assignment.items()],
            )
            self._reveal_test_labels()

    def check_redrawable(self) -> None:
        """Raise unless every label is an oracle label revealed for the test split."""
        other = self._db.execute(
            "SELECT COUNT(*) FROM labels WHERE annotator IS NOT 'test split'"
            " OR item_id NOT IN (SELECT item_id FROM oracle_labels)"
        ).fetchone()[0]
        if other:
            raise PipelineError(
                f"The workspace holds {other} label(s) besides the oracle's test split, so "
                "its split cannot be drawn again (--splits > 1). Simulate on a workspace "
                "whose labels are all hidden (--oracle), or pass --dataset DIR."
            )

    def _reveal_test_labels(self) -> None:
        self._db.execute(
            "INSERT INTO labels (item_id, class_name, source, annotator, created_at)"
            " SELECT o.item_id, o.class_name, 'import', 'test split', ? FROM oracle_labels o"
            " JOIN items i ON i.id = o.item_id WHERE i.split = 'test'"
            " AND NOT EXISTS (SELECT 1 FROM current_labels l WHERE l.item_id = o.item_id)",
            (now(),),
        )

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
