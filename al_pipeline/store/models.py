"""Checkpoints and their held-out evaluations."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from al_pipeline.records import CheckpointMeta, Metrics
from al_pipeline.store.db import Database, now


@dataclass(frozen=True)
class CheckpointRow:
    """A registered checkpoint."""

    id: int
    tag: str
    path: Path
    backbone: str
    image_size: int
    labelled_count: int
    meta: CheckpointMeta
    created_at: str
    round_id: int | None = None

    @property
    def metrics(self) -> Metrics | None:
        """Its held-out metrics, once evaluated."""
        return self.meta.metrics


class Models(Database):
    """Queries on checkpoints."""

    def add_checkpoint(self, path: Path, meta: CheckpointMeta, replace: bool = False) -> int:
        """Register the checkpoint saved at ``path`` under ``meta.tag``; with ``replace``,
        one registered under the same tag (and its evaluations) gives way, in the same
        transaction."""
        tag = meta.tag
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
                    meta.round_id,
                    str(path),
                    meta.backbone,
                    meta.features_digest,
                    meta.image_size,
                    meta.labelled_count,
                    json.dumps(meta.to_json()),
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

    def round_checkpoint(self, round_id: int) -> CheckpointRow | None:
        row = self._db.execute(
            "SELECT * FROM checkpoints WHERE round_id = ? ORDER BY id DESC LIMIT 1", (round_id,)
        ).fetchone()
        return None if row is None else _checkpoint(row)

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


def _checkpoint(row: sqlite3.Row) -> CheckpointRow:
    return CheckpointRow(
        row["id"],
        row["tag"],
        Path(row["path"]),
        row["backbone"],
        row["image_size"],
        row["labelled_count"],
        CheckpointMeta.from_json(json.loads(row["meta"])),
        row["created_at"],
        row["round_id"],
    )
