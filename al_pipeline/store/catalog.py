"""What the labels amount to: every current label with where it came from, and the items
without one (and why)."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from al_pipeline.store.labels import Labels

SPLITS = ("train", "test", "all")
SOURCES = ("human", "import", "oracle", "all")


@dataclass(frozen=True)
class LabelRecord:
    """An item's current label and where it came from."""

    item_id: int
    path: Path  # relative to the workspace when the pool is inside it
    sha256: str
    label: str
    source: str  # import, human or oracle
    annotator: str | None
    labelled_at: str
    round_id: int | None
    split: str  # train or test
    external_id: str | None


@dataclass(frozen=True)
class Unlabelled:
    """An item without a label, and why: unlabelled, queued, skipped or tied."""

    item_id: int
    path: Path
    sha256: str
    state: str
    round_id: int | None


@dataclass(frozen=True)
class Tie:
    """An item whose annotators disagreed with no majority in a round, and its label now."""

    item_id: int
    path: Path
    round_id: int
    label: str | None  # None while it stays undecided


@dataclass(frozen=True)
class ChangedLabel:
    """A label that a checkpoint was trained on and that has changed since (or gone)."""

    item_id: int
    path: Path
    old_label: str
    new_label: str | None
    changed_at: str
    trained_by: str  # the first checkpoint trained while the old label held


# A label's span ends when it is retired or when a later label of the item is recorded.
_SPANS = """
    SELECT l.id, l.item_id, l.class_name, l.created_at,
           COALESCE(l.retired_at, (SELECT MIN(n.created_at) FROM labels n
                                   WHERE n.item_id = l.item_id AND n.id > l.id)) AS ended_at
    FROM labels l
"""


class Catalog(Labels):
    """Queries that read labels with their items."""

    def label_records(
        self, split: str = "all", source: str = "all", since_round: int | None = None
    ) -> list[LabelRecord]:
        """Current labels, filtered by side, source and first round (labels from before
        any round, imports, count as round 0)."""
        where, args = ["1 = 1"], list[object]()
        if split == "test":
            where.append("i.split = 'test'")
        elif split == "train":
            where.append("(i.split IS NULL OR i.split = 'train')")
        if source != "all":
            where.append("l.source = ?")
            args.append(source)
        if since_round is not None:
            where.append("COALESCE(l.round_id, 0) >= ?")
            args.append(since_round)
        rows = self._db.execute(
            "SELECT i.id, i.relpath, p.root, i.sha256, i.split, l.class_name, l.source,"
            " l.annotator, l.created_at, l.round_id, l.external_id FROM current_labels l"
            " JOIN items i ON i.id = l.item_id JOIN pools p ON p.id = i.pool_id"
            f" WHERE {' AND '.join(where)} ORDER BY i.id",
            args,
        )
        return [
            LabelRecord(
                r["id"],
                Path(r["root"]) / r["relpath"],
                r["sha256"],
                r["class_name"],
                r["source"],
                r["annotator"],
                r["created_at"],
                r["round_id"],
                r["split"] or "train",
                r["external_id"],
            )
            for r in rows
        ]

    def item_path(self, item_id: int) -> Path | None:
        """The item's file, or None when there is no such item (an id beyond SQLite's
        64-bit integers included: ``al labels --item`` passes what the user typed)."""
        try:
            row = self._db.execute(
                "SELECT p.root, i.relpath FROM items i JOIN pools p ON p.id = i.pool_id "
                "WHERE i.id = ?",
                (item_id,),
            ).fetchone()
        except OverflowError:
            return None
        return None if row is None else Path(row["root"]) / row["relpath"]

    def tie_records(self) -> list[Tie]:
        """Every recorded tie, oldest round first, with the item's label now."""
        rows = self._db.execute(
            "SELECT t.item_id, t.round_id, p.root, i.relpath, cl.class_name FROM ties t"
            " JOIN items i ON i.id = t.item_id JOIN pools p ON p.id = i.pool_id"
            " LEFT JOIN current_labels cl ON cl.item_id = t.item_id"
            " ORDER BY t.round_id, t.item_id"
        )
        return [
            Tie(r["item_id"], Path(r["root"]) / r["relpath"], r["round_id"], r["class_name"])
            for r in rows
        ]

    def changed_after_training(self) -> list[ChangedLabel]:
        """Training labels that changed (or were retracted) after a checkpoint used them."""
        rows = self._db.execute(
            f"WITH spans AS ({_SPANS})"
            " SELECT s.item_id, s.class_name, s.ended_at, cl.class_name AS now, p.root,"
            " i.relpath, (SELECT c.tag FROM checkpoints c WHERE c.created_at >= s.created_at"
            "   AND c.created_at < s.ended_at ORDER BY c.created_at LIMIT 1) AS trained_by"
            " FROM spans s JOIN items i ON i.id = s.item_id JOIN pools p ON p.id = i.pool_id"
            " LEFT JOIN current_labels cl ON cl.item_id = s.item_id"
            " WHERE s.ended_at IS NOT NULL AND (i.split IS NULL OR i.split = 'train')"
            "   AND (cl.class_name IS NULL OR cl.class_name != s.class_name)"
            "   AND trained_by IS NOT NULL ORDER BY s.ended_at, s.item_id"
        )
        return [
            ChangedLabel(
                r["item_id"],
                Path(r["root"]) / r["relpath"],
                r["class_name"],
                r["now"],
                r["ended_at"],
                r["trained_by"],
            )
            for r in rows
        ]

    def unlabelled_records(self) -> list[Unlabelled]:
        """Items with no label: tied (annotators disagree), skipped, queued in the open
        round, or not picked yet."""
        rows = self._db.execute(
            "SELECT i.id, i.relpath, p.root, i.sha256, i.status, i.flag,"
            " (SELECT MAX(t.round_id) FROM ties t WHERE t.item_id = i.id) AS tied,"
            " (SELECT MAX(q.round_id) FROM queue q WHERE q.item_id = i.id) AS queued"
            " FROM items i JOIN pools p ON p.id = i.pool_id"
            " WHERE NOT EXISTS (SELECT 1 FROM current_labels l WHERE l.item_id = i.id)"
            " ORDER BY i.id"
        )
        return [_unlabelled(r) for r in rows]


def _unlabelled(row: sqlite3.Row) -> Unlabelled:
    if row["tied"] is not None:
        state, round_id = "tied", row["tied"]
    elif row["flag"] == "skipped":
        state, round_id = "skipped", row["queued"]
    elif row["status"] == "queued":
        state, round_id = "queued", row["queued"]
    else:
        state, round_id = "unlabelled", None
    return Unlabelled(row["id"], Path(row["root"]) / row["relpath"], row["sha256"], state, round_id)
