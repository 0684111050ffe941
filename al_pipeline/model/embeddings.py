"""[embed] Pooled backbone features per item, computed once and cached on disk.

Features live in one float16 file per *digest* (backbone + input size + weights), read
through a memory map; the state database maps each item's content hash to its row. A
different backbone or weights means a different digest, so nothing stale is ever reused,
and a new item only appends a row. Rows are written to the file before they are indexed,
so a crash leaves at worst unindexed rows at the end, never an index pointing at nothing.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from al_pipeline.config import Config
from al_pipeline.ingest.images import file_state
from al_pipeline.model.backbones import Backbone
from al_pipeline.model.inference import predict_padded, scoring_batch
from al_pipeline.model.loader import image_batches
from al_pipeline.progress import Progress, silent
from al_pipeline.store.embeddings import CachedRow
from al_pipeline.store.state import State

DTYPE = np.float16


def cache_digest(backbone: Backbone) -> str:
    """Features differ with the backbone, its input size, its weights and the precision."""
    key = f"{backbone.name}|{backbone.image_size}|{backbone.weights_digest}|{backbone.precision}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


class EmbeddingCache:
    """The on-disk feature rows of one backbone + weights.

    Each row's CRC-32 is indexed with it, and the file's size and time are recorded after
    every write. When the file is not as this workspace left it (edited, copied over,
    restored), every row is checked on open, and rows that fail are forgotten: their
    features are computed again, so a damaged cache never changes what is selected.
    """

    def __init__(self, state: State, directory: Path, backbone: Backbone) -> None:
        self.state = state
        self.dim = backbone.dim
        self.digest = cache_digest(backbone)
        self.file = directory / f"{backbone.name}-{backbone.image_size}-{self.digest}.f16"
        directory.mkdir(parents=True, exist_ok=True)
        state.ensure_embedding_set(
            self.digest, backbone.name, backbone.image_size, backbone.weights_digest, self.dim
        )
        index = state.embedding_index(self.digest)
        recorded = state.embedding_file_state(self.digest)
        self.damaged = 0
        if index and recorded != file_state(self.file):
            index = self._verify(index, trust_unchecked=recorded is None)
        self.index = {sha: cached.row for sha, cached in index.items()}

    @property
    def _row_bytes(self) -> int:
        return self.dim * np.dtype(DTYPE).itemsize

    def _rows_on_disk(self) -> int:
        size = self.file.stat().st_size if self.file.exists() else 0
        return size // self._row_bytes

    def _verify(self, index: dict[str, CachedRow], trust_unchecked: bool) -> dict[str, CachedRow]:
        """Check every indexed row against its checksum; forget the rows that fail.

        Rows indexed before checksums existed (``trust_unchecked``: the file state was never
        recorded) get their checksum now.
        """
        on_disk = self._rows_on_disk()
        table = (
            np.memmap(self.file, dtype=DTYPE, mode="r").reshape(-1, self.dim) if on_disk else None
        )
        kept: dict[str, CachedRow] = {}
        for sha, cached in index.items():
            if table is None or cached.row >= on_disk:
                continue
            crc = zlib.crc32(table[cached.row].tobytes())
            if cached.crc == crc or (cached.crc is None and trust_unchecked):
                kept[sha] = CachedRow(cached.row, crc)
        self.damaged = len(index) - len(kept)
        drop = [sha for sha in index if sha not in kept]
        fill = [
            (sha, c.row, c.crc)
            for sha, c in kept.items()
            if c.crc is not None and index[sha].crc is None
        ]
        self.state.add_embedding_rows(self.digest, fill, file_state(self.file), drop)
        return kept

    def append(self, shas: Sequence[str], features: NDArray[np.floating]) -> None:
        first = self._rows_on_disk()
        data = np.ascontiguousarray(features, dtype=DTYPE)
        with self.file.open("ab") as handle:
            handle.truncate(first * self._row_bytes)
            handle.write(data.tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        rows = [
            (sha, first + offset, zlib.crc32(data[offset].tobytes()))
            for offset, sha in enumerate(shas)
        ]
        self.state.add_embedding_rows(self.digest, rows, file_state(self.file))
        self.index.update((sha, row) for sha, row, _ in rows)

    def read(self, rows: NDArray[np.int64]) -> NDArray[np.float32]:
        """Features for ``rows`` as float32 (reads only those rows through a memory map)."""
        if len(rows) == 0:
            return np.zeros((0, self.dim), np.float32)
        table = np.memmap(self.file, dtype=DTYPE, mode="r").reshape(-1, self.dim)
        return np.asarray(table[rows], dtype=np.float32)


@dataclass
class Embedded:
    """Cached features for a list of items, in the list's order.

    Attributes:
        cache: Where the rows are.
        rows: Cache row of each readable item.
        positions: Position in the requested list of each entry of ``rows``.
        computed: How many items needed the backbone this time (0 = all cached).
        failures: ``(position, reason)`` for items whose image could not be decoded.
    """

    cache: EmbeddingCache
    rows: NDArray[np.int64]
    positions: NDArray[np.int64]
    computed: int
    failures: list[tuple[int, str]] = field(default_factory=list)

    def features(self) -> NDArray[np.float32]:
        return self.cache.read(self.rows)

    def map(
        self, fn: Callable[[NDArray[np.float32]], NDArray[np.float32]], size: int = 4096
    ) -> NDArray[np.float32] | None:
        """``fn`` over the features in chunks of ``size`` rows, results stacked in order.

        Pools too big to hold are read a chunk at a time through the memory map. Two threads
        overlap, since reading and widening float16 rows and numpy's matrix products release
        the GIL; small chunks stay in the processor's cache.
        """
        starts = range(0, len(self.rows), size)
        if not starts:
            return None
        with ThreadPoolExecutor(2) as pool:
            parts = pool.map(lambda s: fn(self.cache.read(self.rows[s : s + size])), starts)
            return np.concatenate(list(parts))


def embed(
    state: State,
    directory: Path,
    backbone: Backbone,
    items: Sequence[tuple[str, Path]],
    progress: Progress = silent,
) -> Embedded:
    """Return cached features for ``(sha256, path)`` items, computing only the missing ones."""
    cache = EmbeddingCache(state, directory, backbone)
    missing = sorted(
        {sha: i for i, (sha, _) in enumerate(items) if sha not in cache.index}.values()
    )
    failures: list[tuple[int, str]] = []
    progress("Computing features", 0, len(missing))
    done = 0
    size = scoring_batch()
    for batch in image_batches([items[i][1] for i in missing], backbone.image_size, size):
        if batch.indices:
            features = predict_padded(backbone.model, batch.pixels, size)
            cache.append([items[missing[j]][0] for j in batch.indices], features)
        failures += [(missing[j], reason) for j, reason in batch.failures]
        done += len(batch.indices) + len(batch.failures)
        progress("Computing features", done, len(missing))
    kept = [(i, cache.index[sha]) for i, (sha, _) in enumerate(items) if sha in cache.index]
    return Embedded(
        cache=cache,
        rows=np.array([row for _, row in kept], dtype=np.int64),
        positions=np.array([i for i, _ in kept], dtype=np.int64),
        computed=len(missing) - len(failures),
        failures=failures,
    )


class HasFile(Protocol):
    """An item with a content hash and a path (relative to the workspace or absolute)."""

    @property
    def sha256(self) -> str: ...

    @property
    def path(self) -> Path: ...


def item_files(config: Config, items: Sequence[HasFile]) -> list[tuple[str, Path]]:
    """The ``(content hash, absolute path)`` pairs :func:`embed` takes."""
    return [(item.sha256, config.root / item.path) for item in items]


def embed_items(
    config: Config,
    state: State,
    backbone: Backbone,
    items: Sequence[HasFile],
    progress: Progress = silent,
) -> Embedded:
    """:func:`embed` for workspace items, with the workspace's cache."""
    return embed(state, config.cache_dir, backbone, item_files(config, items), progress)
