"""Pools and their items: registration, the test split, and the sets training and
selection read."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from al_pipeline.errors import PipelineError
from al_pipeline.store.db import now
from al_pipeline.store.labels import Labels

# Items a round may not pick even unlabelled: queued, flagged by a labeller, or on the test
# side. The text is the partial index ``items_held``'s condition (migration 7), so that
# SQLite uses the index for it.
HELD = "status <> 'pool' OR flag IS NOT NULL OR split IS 'test'"


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
class ItemKeys:
    """Items as two columns: ids (ascending) and their content keys (see
    :func:`~al_pipeline.store.db.sha_key`). A pool of 10M items is 160 MB this way, where
    a Python object per item would take gigabytes."""

    ids: NDArray[np.int64]
    keys: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class PoolUse:
    """What a workspace holds of one pool's items: how many there are, how many some round
    queried, how many carry a label (a hidden oracle label does not count), and how many are
    on the test side."""

    items: int
    queried: int
    labelled: int
    test: int
    first_round: int | None = None  # the first round that queried one of them


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

    def drop_empty_pool(self, pool_id: int) -> bool:
        """Remove a pool that holds no item; whether it went."""
        with self.atomic():
            cursor = self._db.execute(
                "DELETE FROM pools WHERE id = ? AND NOT EXISTS"
                " (SELECT 1 FROM items WHERE pool_id = ?)",
                (pool_id, pool_id),
            )
        return cursor.rowcount > 0

    def pool_use(self, pool_id: int) -> PoolUse:
        row = self._db.execute(
            "SELECT COUNT(*), SUM(split = 'test') FROM items WHERE pool_id = ?", (pool_id,)
        ).fetchone()
        queried = self._db.execute(
            "SELECT COUNT(DISTINCT q.item_id), MIN(q.round_id) FROM queue q"
            " JOIN items i ON i.id = q.item_id WHERE i.pool_id = ?",
            (pool_id,),
        ).fetchone()
        labelled = self._db.execute(
            "SELECT COUNT(*) FROM current_labels l JOIN items i ON i.id = l.item_id"
            " WHERE i.pool_id = ?",
            (pool_id,),
        ).fetchone()
        return PoolUse(row[0], queried[0], labelled[0], row[1] or 0, queried[1])

    def remove_pool(self, pool_id: int) -> None:
        """Delete a pool, its items and what is recorded of them alone: near-duplicate
        hashes, content keys, hidden and visible labels. Rounds' queues and ties refer to
        items too; the caller makes sure that no round queried these (the foreign keys
        refuse it otherwise). The files and the embedding cache are left as they are."""
        with self.atomic():
            rows = self._db.execute(
                "SELECT id FROM items WHERE pool_id = ? ORDER BY id", (pool_id,)
            )
            ids = np.array([r[0] for r in rows], np.int64)
            of_pool = "item_id IN (SELECT id FROM items WHERE pool_id = ?)"
            for table in ("item_hashes", "oracle_labels", "labels"):
                self._db.execute(f"DELETE FROM {table} WHERE {of_pool}", (pool_id,))
            self._db.execute("DELETE FROM items WHERE pool_id = ?", (pool_id,))
            self._db.execute("DELETE FROM pools WHERE id = ?", (pool_id,))
            self._drop_keys(ids)

    def _drop_keys(self, gone: NDArray[np.int64]) -> None:
        """Take ``gone`` (sorted ids) out of the content-key blocks; a block left empty
        goes. A block keeps its first id as its name, so blocks stay in id order."""
        if len(gone) == 0:
            return
        blocks = self._db.execute(
            "SELECT first_id, ids, keys FROM item_keys WHERE first_id <= ?", (int(gone[-1]),)
        ).fetchall()
        for first, raw_ids, raw_keys in blocks:
            ids, keys = np.frombuffer(raw_ids, np.int64), np.frombuffer(raw_keys, np.int64)
            keep = ~np.isin(ids, gone, assume_unique=True)
            if keep.all():
                continue
            if not keep.any():
                self._db.execute("DELETE FROM item_keys WHERE first_id = ?", (first,))
                continue
            self._db.execute(
                "UPDATE item_keys SET ids = ?, keys = ? WHERE first_id = ?",
                (ids[keep].tobytes(), keys[keep].tobytes(), first),
            )

    def move_pool(self, pool_id: int, root: Path) -> None:
        """Point a pool at another folder; its files keep their paths inside it."""
        with self.atomic():
            self._db.execute("UPDATE pools SET root = ? WHERE id = ?", (str(root), pool_id))

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
        ids: list[int] = []
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
            ids.append(item_id)
            if item.label is not None and item.hidden_label:
                self._db.execute(
                    "INSERT INTO oracle_labels (item_id, class_name, created_at) VALUES (?, ?, ?)",
                    (item_id, item.label, stamp),
                )
            elif item.label is not None:
                self.insert_label(item_id, item.label, "import")
        self._new_items += zip(ids, [item.file.sha256 for item in items], strict=True)

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

    def hold_back(self, item_ids: Sequence[int], why: str) -> None:
        """Keep items out of every round from now on (their ``flag`` says ``why``)."""
        with self.atomic():
            self._db.executemany(
                "UPDATE items SET flag = ? WHERE id = ?", [(why, item_id) for item_id in item_ids]
            )

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

    def item_keys(self) -> ItemKeys:
        """Every item of the workspace, as columns (from the key blocks: no row per item)."""
        blocks = self._db.execute("SELECT ids, keys FROM item_keys ORDER BY first_id").fetchall()
        empty = np.zeros(0, np.int64)
        return ItemKeys(
            np.concatenate([empty, *(np.frombuffer(b[0], np.int64) for b in blocks)]),
            np.concatenate([empty, *(np.frombuffer(b[1], np.int64) for b in blocks)]),
        )

    def selectable(self) -> ItemKeys:
        """Unlabelled, non-test items not queued in a round and not flagged (skipped by a
        labeller): what a strategy picks from.

        Every item's id and key come from the key blocks, and the few items held back
        (labelled, queued, flagged, test) are taken out: 10M items take a second and 160 MB,
        where reading them row by row took minutes and gigabytes.
        """
        every = self.item_keys()
        ids, keys = every.ids, every.keys
        held = self._db.execute(
            f"SELECT id FROM items WHERE {HELD} UNION SELECT item_id FROM labels"
            " WHERE retired_at IS NULL"
        )
        held_ids = np.array([r[0] for r in held], dtype=np.int64)
        keep = np.ones(len(ids), bool)
        at = np.searchsorted(ids, held_ids)
        found = at < len(ids)
        found[found] &= ids[at[found]] == held_ids[found]
        keep[at[found]] = False
        return ItemKeys(ids[keep], keys[keep])

    def has_selectable(self) -> bool:
        """Whether :meth:`selectable` would return any item (without reading them all)."""
        row = self._db.execute(
            f"SELECT 1 FROM items i WHERE NOT ({HELD}) AND NOT EXISTS (SELECT 1 FROM labels l"
            " WHERE l.item_id = i.id AND l.retired_at IS NULL) LIMIT 1"
        ).fetchone()
        return row is not None

    def item_refs(self, ids: Sequence[int]) -> list[ItemRef]:
        """The items with these ids, in the order given."""
        found = {
            r["id"]: ItemRef(r["id"], r["sha256"], Path(r["root"]) / r["relpath"])
            for r in self._rows_in(
                "SELECT i.id, i.sha256, i.relpath, p.root FROM items i JOIN pools p"
                " ON p.id = i.pool_id WHERE i.id IN ({})",
                [int(i) for i in ids],
            )
        }
        return [found[int(i)] for i in ids]

    def pool_stats(self) -> list[PoolStats]:
        """Counts per pool and class.

        The unlabelled row of a pool is its totals less its labelled rows: one pass over
        the items counts every pool, and only labelled items are joined with their labels
        (a join per item took 20 s at 10M items).
        """
        totals = {
            r["pool"]: (r["items"], r["test"] or 0, r["queued"] or 0)
            for r in self._db.execute(
                "SELECT p.name AS pool, COUNT(i.id) AS items, SUM(i.split = 'test') AS test,"
                " SUM(i.status = 'queued') AS queued FROM pools p"
                " LEFT JOIN items i ON i.pool_id = p.id GROUP BY p.id ORDER BY p.id"
            )
        }
        labelled = self._db.execute(
            "SELECT p.name AS pool, l.class_name AS class_name, COUNT(*) AS items,"
            " SUM(i.split IS NULL OR i.split = 'train') AS train,"
            " SUM(i.split = 'test') AS test,"
            " SUM(i.status = 'queued') AS queued"
            " FROM current_labels l JOIN items i ON i.id = l.item_id"
            " JOIN pools p ON p.id = i.pool_id"
            " GROUP BY p.id, l.class_name ORDER BY p.id, l.class_name"
        ).fetchall()
        stats = []
        for pool, (items, test, queued) in totals.items():
            rows = [r for r in labelled if r["pool"] == pool]
            left = (
                items - sum(r["items"] for r in rows),
                test - sum(r["test"] or 0 for r in rows),
                queued - sum(r["queued"] or 0 for r in rows),
            )
            if left[0] or not rows:  # a pool with no items still gets its row of zeros
                stats.append(PoolStats(pool, None, left[0], 0, left[1], left[2]))
            stats += [
                PoolStats(
                    pool,
                    r["class_name"],
                    r["items"],
                    r["train"] or 0,
                    r["test"] or 0,
                    r["queued"] or 0,
                )
                for r in rows
            ]
        return stats
