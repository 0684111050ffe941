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
