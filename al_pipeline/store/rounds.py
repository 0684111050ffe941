"""Rounds, their queues, and the per-round history."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from al_pipeline.records import HistoryRow, RoundParams
from al_pipeline.store.db import Database, now


@dataclass(frozen=True)
class RoundRow:
    """A round of selection and labelling."""

    id: int
    strategy: str
    size: int
    status: str
    labeller: str
    params: RoundParams
    opened_at: str
    closed_at: str | None


@dataclass(frozen=True)
class QueueEntry:
    """One item queued in a round, as written when the round starts."""

    item_id: int
    position: int
    predicted_class: str | None
    confidence: float | None
    utility: float | None  # how informative the strategy found it (higher: more)


@dataclass(frozen=True)
class QueuedItem:
    """A queued item with what a labeller needs to show it."""

    item_id: int
    sha256: str
    path: Path
    position: int
    predicted_class: str | None
    confidence: float | None
    utility: float | None  # how informative the strategy found it (higher: more)
    external_id: str | None
    state: str


class Rounds(Database):
    """Queries on rounds, queues and history."""

    def open_round(self) -> RoundRow | None:
        row = self._db.execute("SELECT * FROM rounds WHERE status = 'open'").fetchone()
        return None if row is None else _round(row)

    def rounds(self) -> list[RoundRow]:
        return [_round(r) for r in self._db.execute("SELECT * FROM rounds ORDER BY id")]

    def round(self, round_id: int) -> RoundRow | None:
        row = self._db.execute("SELECT * FROM rounds WHERE id = ?", (round_id,)).fetchone()
        return None if row is None else _round(row)

    def start_round(
        self,
        strategy: str,
        labeller: str,
        params: RoundParams,
        entries: Sequence[QueueEntry],
    ) -> int:
        """Create the round, its queue, and mark the items queued: one transaction."""
        with self.atomic():
            cursor = self._db.execute(
                "INSERT INTO rounds (strategy, size, status, labeller, params, opened_at)"
                " VALUES (?, ?, 'open', ?, ?, ?)",
                (strategy, len(entries), labeller, json.dumps(params.to_json()), now()),
            )
            round_id = int(cursor.lastrowid or 0)
            self._db.executemany(
                "INSERT INTO queue (round_id, item_id, position, predicted_class, confidence,"
                " utility) VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (round_id, e.item_id, e.position, e.predicted_class, e.confidence, e.utility)
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
                r["utility"],
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

    def forget_rounds(self) -> None:
        """Go back to before the first round, in a simulation's copy of a workspace: the
        rounds with their queues, ties and history, every label a round or the oracle gave
        (so the oracle can reveal them again), skipped flags and the checkpoint records go.
        The items, their test split, imported labels and the embedding cache stay. The
        checkpoint records must go too: a run would take them for its own stale fine-tuned
        models and delete their features from the cache it shares with the workspace."""
        with self.atomic():
            for sql in (
                "DELETE FROM metrics",
                "DELETE FROM checkpoints",
                "DELETE FROM ties",
                "DELETE FROM queue",
                "DELETE FROM labels WHERE round_id IS NOT NULL OR source = 'oracle'",
                "DELETE FROM rounds",
                "UPDATE items SET status = 'pool', flag = NULL"
                " WHERE status <> 'pool' OR flag IS NOT NULL",
            ):
                self._db.execute(sql)

    def history(self) -> list[HistoryRow]:
        rows = self._db.execute("SELECT data FROM metrics WHERE name = 'history' ORDER BY round_id")
        return [HistoryRow.from_json(json.loads(r[0])) for r in rows]


def _round(row: sqlite3.Row) -> RoundRow:
    return RoundRow(
        row["id"],
        row["strategy"],
        row["size"],
        row["status"],
        row["labeller"],
        RoundParams.from_json(json.loads(row["params"])),
        row["opened_at"],
        row["closed_at"],
    )
