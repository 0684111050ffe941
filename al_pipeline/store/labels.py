"""Labels: every label an item has had (retired ones stay as history), what labellers
bring back, and the oracle's hidden labels."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from al_pipeline.store.db import Database, now

LABEL_SOURCES = ("import", "human", "oracle")


@dataclass(frozen=True)
class PulledLabel:
    """A label a labeller brought back for a queued item."""

    item_id: int
    class_name: str
    source: str
    annotator: str | None = None
    external_id: str | None = None


@dataclass(frozen=True)
class LabelEvent:
    """One label an item had, as the history keeps it."""

    class_name: str
    source: str
    annotator: str | None
    external_id: str | None
    round_id: int | None
    created_at: str
    retired_at: str | None


class Labels(Database):
    """Queries on labels."""

    def current_label(self, item_id: int) -> str | None:
        row = self._db.execute(
            "SELECT class_name FROM current_labels WHERE item_id = ?", (item_id,)
        ).fetchone()
        return None if row is None else str(row[0])

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

    def current_labels(self, item_ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
        """``item_id -> (class, external id)`` of the items' current labels."""
        sql = "SELECT item_id, class_name, external_id FROM current_labels WHERE item_id IN ({})"
        return {
            r["item_id"]: (r["class_name"], r["external_id"]) for r in self._rows_in(sql, item_ids)
        }

    def label_history(self, item_id: int) -> list[LabelEvent]:
        """Every label an item has had, oldest first, retired ones included."""
        rows = self._db.execute(
            "SELECT class_name, source, annotator, external_id, round_id, created_at,"
            " retired_at FROM labels WHERE item_id = ? ORDER BY id",
            (item_id,),
        )
        return [LabelEvent(**dict(r)) for r in rows]

    def label_counts(self) -> dict[str, int]:
        """Current labels per class on the training side."""
        rows = self._db.execute(
            "SELECT l.class_name, COUNT(*) FROM current_labels l JOIN items i ON i.id = l.item_id"
            " WHERE i.split IS NULL OR i.split = 'train' GROUP BY l.class_name"
        )
        return {str(r[0]): int(r[1]) for r in rows}

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
        unresolved: Sequence[int] = (),
    ) -> int:
        """Write pulled labels at once (one transaction); a label already current for an item
        is not written twice. ``retracted`` items lose their current label (it stays in the
        history, retired) and are pending again in the round. ``unresolved`` (annotators
        tied) replaces the round's list of ties. Returns how many labels were new."""
        written = 0
        with self.atomic():
            if round_id is not None:
                self._db.execute("DELETE FROM ties WHERE round_id = ?", (round_id,))
                self._db.executemany(
                    "INSERT INTO ties (round_id, item_id) VALUES (?, ?)",
                    [(round_id, item_id) for item_id in unresolved],
                )
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
