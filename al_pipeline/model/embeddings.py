"""[embed] Pooled backbone features per item, computed once and cached on disk.

Features live in float16 files per *digest* (backbone + input size + weights): the cache's
own file, which this process appends to, and a shard file per Ray worker that wrote some.
The state database indexes their rows by blocks (each row's content key and checksum). A
different backbone or weights means a different digest, so nothing stale is ever reused,
and new items only append rows. Rows are written to a file before they are indexed, so a
crash leaves at worst unindexed rows in a file (never read), never an index pointing at
nothing.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
import zlib
from collections.abc import Callable, Collection, Sequence
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
# Rows computed here are appended (and indexed as one block) this many at a time at least.
APPEND_ROWS = 1024
# A row number is ``shard << SHARD_BITS | row in that shard's file``. Shard 0 is the file
# this process appends to; Ray workers each write a shard of their own (ShardWriter).
SHARD_BITS = 32
_IN_SHARD = (1 << SHARD_BITS) - 1
# Rows widened from float16 at a time (a block stays in the processor's cache).
WIDEN_BLOCK = 256
# Half-precision bits: sign, and the rest (exponent and mantissa); exponent 31 is inf/NaN.
_SIGN, _MAGNITUDE, _INF = np.uint32(0x8000), np.uint32(0x7FFF), np.uint32(0x7C00)


def cache_digest(backbone: Backbone) -> str:
    """Features differ with the backbone, its input size, its weights, the precision and
    the layers they are pooled from (the last layer's own, unnamed, keeps older digests)."""
    key = f"{backbone.name}|{backbone.image_size}|{backbone.weights_digest}|{backbone.precision}"
    if backbone.layers:
        key += "|" + ",".join(backbone.layers)
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
        self._sorted: tuple[NDArray[np.int64], NDArray[np.int64]] | None = None
        self.damaged = 0
        recorded = state.embedding_file_state(self.digest)
        changed = {0} if recorded != file_state(self.file) else set()
        shards = state.shard_file_states(self.digest)
        changed |= {s for s in self._shards() - {0} if shards.get(s) != file_state(self.path(s))}
        if self._blocks and changed:
            self._verify(changed, trust_unchecked=recorded is None)

    @property
    def _row_bytes(self) -> int:
        return self.dim * np.dtype(DTYPE).itemsize

    def _rows_on_disk(self) -> int:
        """Whole rows in the cache's own file (shard 0)."""
        state = file_state(self.file)
        return 0 if state is None else state[0] // self._row_bytes

    def path(self, shard: int) -> Path:
        """The feature file of a shard (0: the cache's own file)."""
        return shard_path(self.file, shard)

    def _shards(self) -> set[int]:
        return {b.first_row >> SHARD_BITS for b in self._blocks}

    def _table(self, shard: int) -> NDArray[np.float16] | None:
        """A shard's rows through a memory map (None while the file is empty or missing)."""
        size = file_state(self.path(shard))
        if size is None or size[0] < self._row_bytes:
            return None
        return np.memmap(self.path(shard), dtype=DTYPE, mode="r").reshape(-1, self.dim)

    def _verify(self, shards: set[int], trust_unchecked: bool) -> None:
        """Check every indexed row of these shards against its checksum; forget the rows
        that fail, and record the files' states.

        Rows indexed before checksums existed (``trust_unchecked``: the file state was never
        recorded) get their checksum now.
        """
        tables = {shard: self._table(shard) for shard in shards}
        checked = []
        for block in self._blocks:
            shard = block.first_row >> SHARD_BITS
            if shard not in shards:
                checked.append(block)
                continue
            checked.append(self._check(block, tables[shard], trust_unchecked))
        changed = [
            b
            for b, old in zip(checked, self._blocks, strict=True)
            if not np.array_equal(b.crcs, old.crcs)
        ]
        self.state.add_embedding_blocks(self.digest, changed, file_state(self.file))
        self.record_shards(shards)
        self._blocks = checked

    def _check(
        self, block: Block, table: NDArray[np.float16] | None, trust_unchecked: bool
    ) -> Block:
        crcs = block.crcs.copy()
        on_disk = 0 if table is None else len(table)
        for offset in np.flatnonzero(crcs != NO_ROW).tolist():
            row = (block.first_row & _IN_SHARD) + offset
            crc = -1 if table is None or row >= on_disk else zlib.crc32(table[row])
            trusted = crcs[offset] == UNCHECKED and trust_unchecked
            crcs[offset] = crc if crc == crcs[offset] or (trusted and crc >= 0) else NO_ROW
            self.damaged += int(crcs[offset] == NO_ROW)
        return Block(block.first_row, block.keys, crcs)

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
        if self._sorted is None:
            keys = [b.keys[b.crcs != NO_ROW] for b in self._blocks]
            rows = [b.first_row + np.flatnonzero(b.crcs != NO_ROW) for b in self._blocks]
            all_keys = np.concatenate([np.zeros(0, np.int64), *keys])
            all_rows = np.concatenate([np.zeros(0, np.int64), *rows])
            order = np.argsort(all_keys, kind="stable")
            self._sorted = (all_keys[order], all_rows[order])
        return self._sorted

    def append(self, keys: NDArray[np.int64], features: NDArray[np.floating]) -> None:
        """Write rows at the end of the cache's own file, then index them as one block.

        At the end of the file, not of this index: a simulation's copies of the database
        share the file, and rows one of them indexed must never be overwritten."""
        first = self._rows_on_disk()
        crcs = append_rows(self.file, first, features)
        block = Block(first, np.asarray(keys, np.int64), crcs)
        self.state.add_embedding_blocks(self.digest, [block], file_state(self.file))
        self._blocks.append(block)
        self._sorted = None

    def index_written(
        self, rows: NDArray[np.int64], keys: NDArray[np.int64], crcs: NDArray[np.int64]
    ) -> None:
        """Index rows a worker wrote to its shard (a block per run of consecutive rows)."""
        runs = np.split(np.arange(len(rows)), np.flatnonzero(np.diff(rows) != 1) + 1)
        blocks = [Block(int(rows[r[0]]), keys[r], crcs[r]) for r in runs if len(r)]
        self.state.add_embedding_blocks(self.digest, blocks, file_state(self.file))
        self._blocks += blocks
        self._sorted = None

    def record_shards(self, shards: set[int] | None = None) -> None:
        """Record the worker shards' file states (default: all), once their writers are
        done."""
        shards = (self._shards() if shards is None else shards) - {0}
        self.state.record_shard_states(self.digest, {s: file_state(self.path(s)) for s in shards})

    def read(self, rows: NDArray[np.int64]) -> NDArray[np.float32]:
        """Features for ``rows`` as float32 (reads only those rows through memory maps)."""
        shards = rows >> SHARD_BITS
        if len(rows) == 0 or (shards == shards[0]).all():
            return self._read_shard(int(shards[0]) if len(rows) else 0, rows & _IN_SHARD)
        out = np.empty((len(rows), self.dim), np.float32)
        for shard in np.unique(shards).tolist():
            at = shards == shard
            out[at] = self._read_shard(shard, rows[at] & _IN_SHARD)
        return out

    def _read_shard(self, shard: int, rows: NDArray[np.int64]) -> NDArray[np.float32]:
        if len(rows) == 0:
            return np.zeros((0, self.dim), np.float32)
        table = self._table(shard)
        if table is None:
            raise FileNotFoundError(f"{self.path(shard)} is missing or empty")
        return widen(table[rows])


def drop_features(config: Config, state: State, weights_digests: Collection[str]) -> int:
    """Delete the cached features computed with these weights; how many files went.

    The files go first, then their index: a kill between the two leaves an index whose
    files are missing, which the cache reads as damaged rows and computes again, never a
    file that nothing indexes and nothing would delete.
    """
    removed = 0
    for digest in state.embedding_sets_of(weights_digests):
        for path in config.cache_dir.glob(f"*-{digest}*.f16"):
            path.unlink(missing_ok=True)
            removed += 1
        state.drop_embedding_set(digest)
    return removed


def shard_path(file: Path, shard: int) -> Path:
    """Shard ``shard`` of the cache whose own file (shard 0) is ``file``."""
    return file if shard == 0 else file.with_suffix(f".shard-{shard}.f16")


def append_rows(file: Path, at_row: int, features: NDArray[np.floating]) -> NDArray[np.int64]:
    """Write rows to ``file`` from row ``at_row`` on (a partial row a crash left there is
    cut off) and sync them; their CRC-32s."""
    data = np.ascontiguousarray(features, dtype=DTYPE)
    with file.open("ab") as handle:
        handle.truncate(at_row * data.shape[1] * data.itemsize)
        handle.write(data.tobytes())
        handle.flush()
        os.fsync(handle.fileno())
    return np.array([zlib.crc32(row) for row in data], dtype=np.int64)


class ShardWriter:
    """A feature file of one writer's own (a Ray worker's), beside the cache's file.

    It is created under a random shard number no other file has (``O_EXCL``, so writers on
    several machines sharing the folder never collide), and each batch is appended and
    synced before its row numbers and checksums go back to the process that indexes them.
    """

    def __init__(self, cache_file: Path) -> None:
        while True:
            shard = secrets.randbelow(2**31 - 2) + 1
            path = shard_path(cache_file, shard)
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
            except FileExistsError:
                continue
            self.shard, self.path, self.rows = shard, path, 0
            return

    def write(self, features: NDArray[np.floating]) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
        """Append rows; their row numbers and CRC-32s."""
        crcs = append_rows(self.path, self.rows, features)
        first = (self.shard << SHARD_BITS) | self.rows
        self.rows += len(crcs)
        return first + np.arange(len(crcs), dtype=np.int64), crcs


class _Stream:
    """Reads ascending rows of the feature files as float32, for a pass over many of them.

    Rows that lie close together in one shard are read as one span with ``preadv`` (no
    memory map, so a pass over a file larger than memory leaves no pages mapped in the
    process); scattered rows go through :meth:`EmbeddingCache.read`. Each thread reuses its
    own buffers: at 10M rows, fresh ones for every chunk cost more than the work.
    """

    def __init__(self, cache: EmbeddingCache, size: int) -> None:
        self.cache, self.size = cache, size
        self.local = threading.local()
        self.fds: dict[int, int] = {}
        self.lock = threading.Lock()

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self.fds.values():
            os.close(fd)

    def _fd(self, shard: int) -> int:
        with self.lock:
            if shard not in self.fds:
                fd = os.open(self.cache.path(shard), os.O_RDONLY)
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                self.fds[shard] = fd
            return self.fds[shard]

    def _buffers(self) -> tuple[NDArray[np.float16], NDArray[np.float32]]:
        if not hasattr(self.local, "span"):
            self.local.span = np.empty((2 * self.size, self.cache.dim), DTYPE)
            self.local.out = np.empty((self.size, self.cache.dim), np.float32)
        return self.local.span, self.local.out

    def features(self, rows: NDArray[np.int64]) -> NDArray[np.float32]:
        """The rows' features, in a buffer this thread's next call overwrites."""
        span_rows = int(rows[-1] - rows[0]) + 1 if len(rows) else 0
        if not len(rows) or span_rows > 2 * self.size or not hasattr(os, "preadv"):
            return self.cache.read(rows)  # scattered, or across shards
        span, out = self._buffers()
        table = span[:span_rows]
        fd = self._fd(int(rows[0]) >> SHARD_BITS)
        offset = (int(rows[0]) & _IN_SHARD) * self.cache._row_bytes
        os.preadv(fd, [table.data.cast("B")], offset)
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
        starts = range(0, len(order), size)
        # One BLAS thread per chunk: two threads each running a multithreaded BLAS
        # oversubscribe the cores (a third slower on two).
        with (
            _Stream(self.cache, size) as stream,
            threadpool_limits(1, user_api="blas"),
            ThreadPoolExecutor(2) as pool,
        ):
            parts = list(pool.map(lambda s: fn(stream.features(ascending[s : s + size])), starts))
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
    the paths of millions of items are never all in memory).

    Rows are appended :data:`APPEND_ROWS` at a time, not a backbone batch at a time: a
    cache of 10M rows filled 32 at a time would be indexed by 300,000 blocks. A run killed
    halfway loses at most the rows not appended yet.
    """
    size = batch_size or scoring_batch()
    failures: Failures = []
    progress("Computing features", 0, len(missing))
    for start in range(0, len(missing), EMBED_CHUNK):
        positions = missing[start : start + EMBED_CHUNK]
        chunk = files(positions)
        done, keys, rows = start, [], []
        for batch in image_batches([path for _, path in chunk], cache.backbone.image_size, size):
            if batch.indices:
                rows.append(predict_padded(cache.backbone.model, batch.pixels, size))
                keys.append(sha_keys([chunk[j][0] for j in batch.indices]))
            if sum(map(len, keys)) >= APPEND_ROWS:
                cache.append(np.concatenate(keys), np.concatenate(rows))
                keys, rows = [], []
            failures += [(int(positions[j]), reason) for j, reason in batch.failures]
            done += len(batch.indices) + len(batch.failures)
            progress("Computing features", done, len(missing))
        if keys:
            cache.append(np.concatenate(keys), np.concatenate(rows))
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
