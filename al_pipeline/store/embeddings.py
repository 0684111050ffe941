"""The embedding cache's index: which feature file row holds an item's features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from al_pipeline.store.db import Database, now


@dataclass(frozen=True)
class CachedRow:
    """Where an item's features are in a feature file, and their checksum (CRC-32)."""

    row: int
    crc: int | None


class Embeddings(Database):
    """Queries on the embedding cache index."""

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
