"""[embed] Pooled backbone features per item, computed once and cached on disk.

Features live in one float16 file per *digest* (backbone + input size + weights); the
state database indexes its rows by blocks (each row's content key and checksum). A
different backbone or weights means a different digest, so nothing stale is ever reused,
and new items only append rows. Rows are written to the file before they are indexed, so
a crash leaves at worst unindexed rows at the end (overwritten by the next append), never
an index pointing at nothing.
"""

from __future__ import annotations

import hashlib
import os
import threading
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from al_pipeline.config import Config
from al_pipeline.ingest.images import file_state
from al_pipeline.model.backbones import Backbone
from al_pipeline.model.inference import predict_padded, scoring_batch
from al_pipeline.model.loader import image_batches
from al_pipeline.progress import Progress, silent
from al_pipeline.store.db import sha_key
from al_pipeline.store.embeddings import NO_ROW, UNCHECKED, Block
from al_pipeline.store.items import ItemKeys
from al_pipeline.store.state import State

DTYPE = np.float16
# Items whose paths are resolved and decoded at a time when features are computed.
EMBED_CHUNK = 50_000
# Rows widened from float16 at a time (a block stays in the processor's cache).
WIDEN_BLOCK = 256
# Half-precision bits: sign, and the rest (exponent and mantissa); exponent 31 is inf/NaN.
_SIGN, _MAGNITUDE, _INF = np.uint32(0x8000), np.uint32(0x7FFF), np.uint32(0x7C00)


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
        self.backbone = backbone
        self.dim = backbone.dim
        self.digest = cache_digest(backbone)
        self.file = directory / f"{backbone.name}-{backbone.image_size}-{self.digest}.f16"
        directory.mkdir(parents=True, exist_ok=True)
        state.ensure_embedding_set(
            self.digest, backbone.name, backbone.image_size, backbone.weights_digest, self.dim
        )
        self._blocks = state.embedding_blocks(self.digest)
        self._table: tuple[NDArray[np.int64], NDArray[np.int64]] | None = None
        self._end: int | None = None
        recorded = state.embedding_file_state(self.digest)
        self.damaged = 0
        if self._blocks and recorded != file_state(self.file):
            self._verify(trust_unchecked=recorded is None)

    @property
    def _row_bytes(self) -> int:
        return self.dim * np.dtype(DTYPE).itemsize

    @property
    def rows(self) -> int:
        """Rows indexed so far (the next append goes there)."""
        if self._end is None:
            self._end = max((b.first_row + len(b.keys) for b in self._blocks), default=0)
        return self._end

    def _rows_on_disk(self) -> int:
        size = self.file.stat().st_size if self.file.exists() else 0
        return size // self._row_bytes

    def _verify(self, trust_unchecked: bool) -> None:
        """Check every indexed row against its checksum; forget the rows that fail.

        Rows indexed before checksums existed (``trust_unchecked``: the file state was never
        recorded) get their checksum now.
        """
        on_disk = self._rows_on_disk()
        table = (
            np.memmap(self.file, dtype=DTYPE, mode="r").reshape(-1, self.dim) if on_disk else None
        )
        checked = []
        for block in self._blocks:
            crcs = block.crcs.copy()
            for offset in np.flatnonzero(crcs != NO_ROW).tolist():
                row = block.first_row + offset
                crc = -1 if table is None or row >= on_disk else zlib.crc32(table[row])
                trusted = crcs[offset] == UNCHECKED and trust_unchecked
                crcs[offset] = crc if crc == crcs[offset] or (trusted and crc >= 0) else NO_ROW
                self.damaged += int(crcs[offset] == NO_ROW)
            checked.append(Block(block.first_row, block.keys, crcs))
        changed = [
            b
            for b, old in zip(checked, self._blocks, strict=True)
            if not np.array_equal(b.crcs, old.crcs)
        ]
        self.state.add_embedding_blocks(self.digest, changed, file_state(self.file))
        self._blocks = checked

    def lookup(self, keys: NDArray[np.int64]) -> NDArray[np.int64]:
        """The row holding each content key's features, or -1.

        Vectorised: the index and the keys are both sorted, so the binary searches walk
        memory in order (random searches into 10M keys took seconds more).
        """
        sorted_keys, rows = self._lookup_table()
        found = np.full(len(keys), -1, np.int64)
        if not len(rows):
            return found
        order = np.argsort(keys)
        wanted = keys[order]
        at = np.searchsorted(sorted_keys, wanted, side="right") - 1
        hit = (at >= 0) & (sorted_keys[np.maximum(at, 0)] == wanted)
        found[order[hit]] = rows[at[hit]]
        return found

    def _lookup_table(self) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Indexed keys sorted, and their rows; for a key indexed twice, the later row is
        last, which :meth:`lookup` picks."""
        if self._table is None:
            keys = [b.keys[b.crcs != NO_ROW] for b in self._blocks]
            rows = [b.first_row + np.flatnonzero(b.crcs != NO_ROW) for b in self._blocks]
            all_keys = np.concatenate([np.zeros(0, np.int64), *keys])
            all_rows = np.concatenate([np.zeros(0, np.int64), *rows])
            order = np.argsort(all_keys, kind="stable")
            self._table = (all_keys[order], all_rows[order])
        return self._table

    def append(self, keys: NDArray[np.int64], features: NDArray[np.floating]) -> None:
        """Write rows after the indexed ones (over any a crash left unindexed), then index
        them as one block."""
        first = self.rows
        data = np.ascontiguousarray(features, dtype=DTYPE)
        with self.file.open("ab") as handle:
            handle.truncate(first * self._row_bytes)
            handle.write(data.tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        crcs = np.array([zlib.crc32(row) for row in data], dtype=np.int64)
        block = Block(first, np.asarray(keys, np.int64), crcs)
        self.state.add_embedding_blocks(self.digest, [block], file_state(self.file))
        self._blocks.append(block)
        self._table, self._end = None, first + len(data)

    def read(self, rows: NDArray[np.int64]) -> NDArray[np.float32]:
        """Features for ``rows`` as float32 (reads only those rows through a memory map)."""
        if len(rows) == 0:
            return np.zeros((0, self.dim), np.float32)
        table = np.memmap(self.file, dtype=DTYPE, mode="r").reshape(-1, self.dim)
        return widen(table[rows])


class _Stream:
    """Reads ascending rows of a feature file as float32, for a pass over many of them.

    Rows that lie close together are read as one span with ``preadv`` (no memory map, so a
    pass over a file larger than memory leaves no pages mapped in the process); scattered
    rows go through :meth:`EmbeddingCache.read`. Each thread reuses its own buffers: at
    10M rows, fresh ones for every chunk cost more than the work.
    """

    def __init__(self, cache: EmbeddingCache, fd: int, size: int) -> None:
        self.cache, self.fd, self.size = cache, fd, size
        self.local = threading.local()

    def _buffers(self) -> tuple[NDArray[np.float16], NDArray[np.float32]]:
        if not hasattr(self.local, "span"):
            self.local.span = np.empty((2 * self.size, self.cache.dim), DTYPE)
            self.local.out = np.empty((self.size, self.cache.dim), np.float32)
        return self.local.span, self.local.out

    def features(self, rows: NDArray[np.int64]) -> NDArray[np.float32]:
        """The rows' features, in a buffer this thread's next call overwrites."""
        span_rows = int(rows[-1] - rows[0]) + 1 if len(rows) else 0
        if not len(rows) or span_rows > 2 * self.size or not hasattr(os, "preadv"):
            return self.cache.read(rows)
        span, out = self._buffers()
        table = span[:span_rows]
        os.preadv(self.fd, [table.data.cast("B")], int(rows[0]) * self.cache._row_bytes)
        half = table if span_rows == len(rows) else table[rows - rows[0]]
        return widen(half, out[: len(rows)])


def widen(half: NDArray[np.float16], out: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
    """float16 -> float32, exactly, and faster than numpy's ``astype``.

    The float16 bits, shifted into a float32's place and scaled by 2^112, are the same
    number (subnormals included); only infinities and NaNs need numpy's slower cast. Done
    in blocks of rows that stay in the processor's cache.
    """
    out = np.empty(half.shape, np.float32) if out is None else out
    sign = np.empty((WIDEN_BLOCK, *half.shape[1:]), np.uint32)
    for start in range(0, len(half), WIDEN_BLOCK):
        part = half[start : start + WIDEN_BLOCK]
        _widen_block(part, out[start : start + len(part)], sign[: len(part)])
    return out


def _widen_block(
    half: NDArray[np.float16], out: NDArray[np.float32], sign: NDArray[np.uint32]
) -> None:
    bits = out.view(np.uint32)
    np.copyto(bits, half.view(np.uint16))
    np.bitwise_and(bits, _SIGN, out=sign)
    np.left_shift(sign, 16, out=sign)
    np.bitwise_and(bits, _MAGNITUDE, out=bits)
    if bits.size and bits.max() >= _INF:
        np.copyto(out, half)
        return
    np.left_shift(bits, 13, out=bits)
    np.multiply(out, np.float32(2.0**112), out=out)
    np.bitwise_or(bits, sign, out=bits)


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
        """``fn`` over the features in chunks of ``size`` rows, results in ``rows`` order.

        Chunks are read in file order, so a pool larger than memory streams from disk
        once. Two threads overlap, since reading, widening float16 rows and numpy's
        matrix products release the GIL. ``fn`` must not keep its input: the buffer is
        reused for the next chunk.
        """
        if not len(self.rows):
            return None
        order = np.argsort(self.rows, kind="stable")
        ascending = self.rows[order]
        fd = os.open(self.cache.file, os.O_RDONLY)
        try:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            stream = _Stream(self.cache, fd, size)
            starts = range(0, len(order), size)
            # One BLAS thread per chunk: two threads each running a multithreaded BLAS
            # oversubscribe the cores (a third slower on two).
            with threadpool_limits(1, user_api="blas"), ThreadPoolExecutor(2) as pool:
                parts = list(
                    pool.map(lambda s: fn(stream.features(ascending[s : s + size])), starts)
                )
        finally:
            os.close(fd)
        results = np.concatenate(parts)
        unsorted = np.empty_like(results)
        unsorted[order] = results
        return unsorted


def sha_keys(shas: Sequence[str]) -> NDArray[np.int64]:
    """:func:`~al_pipeline.store.db.sha_key` of each content hash."""
    return np.fromiter((sha_key(sha) for sha in shas), np.int64, len(shas))


# The ``(sha256, path)`` of the items at some positions of a request.
Files = Callable[[NDArray[np.int64]], Sequence[tuple[str, Path]]]
Failures = list[tuple[int, str]]


class Compute(Protocol):
    """Computes and appends the features of the items at ``missing`` positions; returns
    ``(position, reason)`` for those that could not be decoded."""

    def __call__(
        self, cache: EmbeddingCache, missing: NDArray[np.int64], files: Files, progress: Progress
    ) -> Failures: ...


def embed(
    state: State,
    directory: Path,
    backbone: Backbone,
    items: Sequence[tuple[str, Path]],
    progress: Progress = silent,
) -> Embedded:
    """Return cached features for ``(sha256, path)`` items, computing only the missing ones."""
    return embed_keys(
        EmbeddingCache(state, directory, backbone),
        sha_keys([sha for sha, _ in items]),
        lambda positions: [items[p] for p in positions.tolist()],
        progress,
    )


def embed_pool(
    config: Config, state: State, backbone: Backbone, pool: ItemKeys, progress: Progress = silent
) -> Embedded:
    """:func:`embed` for items given as columns; only the items whose features must be
    computed are read from the database."""
    return embed_keys(
        EmbeddingCache(state, config.cache_dir, backbone),
        pool.keys,
        pool_files(config, state, pool),
        progress,
    )


def pool_files(config: Config, state: State, pool: ItemKeys) -> Files:
    """The files of the items at some positions of ``pool``, from the database."""
    return lambda positions: item_files(config, state.item_refs(pool.ids[positions].tolist()))


def embed_keys(
    cache: EmbeddingCache,
    keys: NDArray[np.int64],
    files: Files,
    progress: Progress = silent,
    compute: Compute | None = None,
) -> Embedded:
    """Features for items with these content keys; the ones not cached yet are computed by
    ``compute`` (default: :func:`compute_here`)."""
    rows = cache.lookup(keys)
    missing = np.flatnonzero(rows < 0)
    _, last = np.unique(keys[missing][::-1], return_index=True)
    missing = np.sort(missing[::-1][last])  # one position per content
    failures = (compute or compute_here)(cache, missing, files, progress)
    if len(missing):
        rows = cache.lookup(keys)
    kept = np.flatnonzero(rows >= 0)
    return Embedded(
        cache=cache,
        rows=rows[kept],
        positions=kept,
        computed=len(missing) - len(failures),
        failures=failures,
    )


def compute_here(
    cache: EmbeddingCache,
    missing: NDArray[np.int64],
    files: Files,
    progress: Progress,
    batch_size: int | None = None,
) -> Failures:
    """Decode and run the backbone in this process, a chunk of items at a time (so that
    the paths of millions of items are never all in memory)."""
    size = batch_size or scoring_batch()
    failures: Failures = []
    progress("Computing features", 0, len(missing))
    for start in range(0, len(missing), EMBED_CHUNK):
        positions = missing[start : start + EMBED_CHUNK]
        chunk = files(positions)
        done = start
        for batch in image_batches([path for _, path in chunk], cache.backbone.image_size, size):
            if batch.indices:
                features = predict_padded(cache.backbone.model, batch.pixels, size)
                cache.append(sha_keys([chunk[j][0] for j in batch.indices]), features)
            failures += [(int(positions[j]), reason) for j, reason in batch.failures]
            done += len(batch.indices) + len(batch.failures)
            progress("Computing features", done, len(missing))
    return failures


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
