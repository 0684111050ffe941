"""The embedding cache's index: which feature file row holds which content, by blocks.

Each append to a feature file is indexed as one block: its first row, and the content key
(:func:`~al_pipeline.store.db.sha_key`) and CRC-32 of each of its rows as arrays. Opening
the index of 10M rows reads a few thousand blobs, not 10M rows.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from al_pipeline.store.db import Database, now, sha_key

# A row's checksum when the row holds nothing (never indexed, or failed its check), and
# when it was indexed before checksums existed (schema 3) and has not been checked yet.
NO_ROW = -1
UNCHECKED = -2


@dataclass(frozen=True)
class Block:
    """Consecutive rows of a feature file: their content keys and checksums."""

    first_row: int
    keys: NDArray[np.int64]
    crcs: NDArray[np.int64]


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
            self._move_rows_into_blocks(digest)

    def _move_rows_into_blocks(self, digest: str) -> None:
        """Index a cache indexed a row per item (schema < 7) by blocks instead."""
        rows = self._db.execute(
            "SELECT sha256, row, crc FROM embedding_rows WHERE digest = ? ORDER BY row",
            (digest,),
        ).fetchall()
        if not rows:
            return
        count = int(rows[-1][1]) + 1
        keys = np.zeros(count, np.int64)
        crcs = np.full(count, NO_ROW, np.int64)
        for sha, row, crc in rows:
            keys[row] = sha_key(sha)
            crcs[row] = UNCHECKED if crc is None else crc
        self._db.execute("DELETE FROM embedding_rows WHERE digest = ?", (digest,))
        self._insert_block(digest, Block(0, keys, crcs))

    def embedding_sets_of(self, weights_digests: Collection[str]) -> list[str]:
        """The digests of the feature files computed with any of these weights."""
        rows = self._db.execute("SELECT digest, weights_digest FROM embedding_sets")
        return [str(r[0]) for r in rows if r[1] in weights_digests]

    def drop_embedding_set(self, digest: str) -> None:
        """Forget a feature file's index: its blocks, shards and the set itself."""
        with self.atomic():
            for table in ("embedding_blocks", "embedding_shards", "embedding_rows"):
                self._db.execute(f"DELETE FROM {table} WHERE digest = ?", (digest,))
            self._db.execute("DELETE FROM embedding_sets WHERE digest = ?", (digest,))

    def embedding_blocks(self, digest: str) -> list[Block]:
        """Every block of a feature file's index, in row order."""
        rows = self._db.execute(
            "SELECT first_row, keys, crcs FROM embedding_blocks WHERE digest = ?"
            " ORDER BY first_row",
            (digest,),
        )
        return [
            Block(
                int(r[0]),
                np.frombuffer(r[1], np.int64).copy(),
                np.frombuffer(r[2], np.int64).copy(),
            )
            for r in rows
        ]

    def embedding_file_state(self, digest: str) -> tuple[int, int] | None:
        """(size, mtime_ns) of the feature file after this workspace last wrote it."""
        row = self._db.execute(
            "SELECT file_size, file_mtime_ns FROM embedding_sets WHERE digest = ?", (digest,)
        ).fetchone()
        return None if row is None or row[0] is None else (int(row[0]), int(row[1]))

    def shard_file_states(self, digest: str) -> dict[int, tuple[int, int]]:
        """(size, mtime_ns) of each worker-written shard file, as recorded after its run."""
        rows = self._db.execute(
            "SELECT shard, file_size, file_mtime_ns FROM embedding_shards WHERE digest = ?",
            (digest,),
        )
        return {int(r[0]): (int(r[1]), int(r[2])) for r in rows}

    def record_shard_states(self, digest: str, states: dict[int, tuple[int, int] | None]) -> None:
        """Record shard files' states (None: the file is gone; forget it)."""
        with self.atomic():
            for shard, state in states.items():
                self._db.execute(
                    "DELETE FROM embedding_shards WHERE digest = ? AND shard = ?", (digest, shard)
                )
                if state is not None:
                    self._db.execute(
                        "INSERT INTO embedding_shards (digest, shard, file_size, file_mtime_ns)"
                        " VALUES (?, ?, ?, ?)",
                        (digest, shard, *state),
                    )

    def add_embedding_blocks(
        self, digest: str, blocks: Sequence[Block], file_state: tuple[int, int] | None
    ) -> None:
        """Index (or re-index: same first row) blocks of rows, and record the file's state
        after the write: one transaction."""
        with self.atomic():
            for block in blocks:
                self._insert_block(digest, block)
            self._db.execute(
                "UPDATE embedding_sets SET file_size = ?, file_mtime_ns = ? WHERE digest = ?",
                (*(file_state or (None, None)), digest),
            )

    def _insert_block(self, digest: str, block: Block) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO embedding_blocks (digest, first_row, keys, crcs)"
            " VALUES (?, ?, ?, ?)",
            (
                digest,
                block.first_row,
                np.ascontiguousarray(block.keys, np.int64).tobytes(),
                np.ascontiguousarray(block.crcs, np.int64).tobytes(),
            ),
        )
