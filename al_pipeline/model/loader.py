"""Images in, uint8 pixel batches out, in bounded memory, decoding ahead of the model.

Pillow holds the GIL for much of a decode, so threads stop at about two cores' worth of
decoding. On a machine with more cores and a pool big enough to repay starting them,
worker processes decode straight into a ring of shared-memory batches instead, so decoding
scales with the cores and no pixels are pickled. Either way only a few batches are in
memory at once, and the model works on one batch while the next ones are decoded.

Pixels stay uint8 (a quarter of float32's bytes on the way to an accelerator); the model
casts them and applies its preprocessing inside its compiled graph.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import shutil
from collections import deque
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import (
    Executor,
    Future,
    ProcessPoolExecutor,
    ThreadPoolExecutor,
    wait,
)
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from al_pipeline.errors import PipelineError
from al_pipeline.ingest.images import require_regular_file, to_rgb

CORES = os.cpu_count() or 1
WORKERS = min(8, CORES)
PROCESS_WORKERS = min(16, CORES)
# Worker processes pay about a second to start; below this many images, threads win.
PROCESS_MIN_IMAGES = 1024
CHUNK = 32  # images per worker task (one task per batch when the batch is smaller)

Failures = list[tuple[int, str]]


@dataclass
class Batch:
    """Decoded pixels for the readable images of one chunk of paths.

    Attributes:
        pixels: ``(n, size, size, 3)`` uint8 RGB.
        indices: Positions (in the full path list) of the rows of ``pixels``.
        failures: ``(position, reason)`` for each file that could not be decoded.
    """

    pixels: NDArray[np.uint8]
    indices: list[int]
    failures: Failures = field(default_factory=list)


def decode(path: Path, size: int) -> NDArray[np.uint8]:
    """Decode one file to a ``size`` x ``size`` RGB array (EXIF-oriented)."""
    with Image.open(require_regular_file(path)) as image:
        image.draft("RGB", (size, size))
        image.load()
        rgb = to_rgb(image)
    return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


# What decoding a file the user named can raise: it is reported with the file, not raised.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def decode_error(exc: BaseException) -> str:
    """The reason a user reads for a file that could not be decoded."""
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file"
    return f"cannot decode ({exc})"


def _decode_rows(paths: Sequence[Path], offset: int, size: int, out: NDArray[np.uint8]) -> Failures:
    """Decode ``paths`` into ``out[offset + i]``; return the failures by position."""
    failures: Failures = []
    for row, path in enumerate(paths, start=offset):
        try:
            out[row] = decode(path, size)
        except DECODE_ERRORS as exc:
            failures.append((row, decode_error(exc)))
    return failures


def decode_chunk(paths: Sequence[Path], offset: int, size: int) -> Batch:
    """Decode ``paths`` (positions from ``offset``) in this thread: the decoder every
    engine uses."""
    out = np.empty((len(paths), size, size, 3), np.uint8)
    failures = _decode_rows(paths, 0, size, out)
    failed = {row for row, _ in failures}
    kept = [row for row in range(len(paths)) if row not in failed]
    return Batch(
        out[kept] if failed else out,
        [offset + row for row in kept],
        [(offset + row, why) for row, why in failures],
    )


def image_batches(
    paths: Sequence[Path],
    size: int,
    batch_size: int = 32,
    workers: int | None = None,
    processes: bool | None = None,
) -> Generator[Batch, None, None]:
    """Yield decoded batches in order, decoding ahead of the consumer. Closing the generator
    early stops the workers and frees the shared memory.

    ``processes`` None picks worker processes when there are more than two cores and at
    least :data:`PROCESS_MIN_IMAGES` paths, else threads. Threads are used too when the
    shared-memory ring would not fit in /dev/shm.
    """
    if processes is None:
        processes = uses_processes(len(paths))
    workers = workers or (PROCESS_WORKERS if processes else WORKERS)
    slots = max(4, -(-2 * workers * min(CHUNK, batch_size) // batch_size))
    if processes and _shared_memory_fits(slots * batch_size * size * size * 3):
        yield from _process_batches(paths, size, batch_size, workers, slots)
    else:
        yield from _thread_batches(paths, size, batch_size, workers)


def uses_processes(count: int) -> bool:
    """Whether :func:`image_batches` decodes ``count`` images in worker processes."""
    return CORES > 2 and count >= PROCESS_MIN_IMAGES


def _thread_batches(
    paths: Sequence[Path], size: int, batch_size: int, workers: int
) -> Iterator[Batch]:
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[Batch]] = deque()
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            pending.append(pool.submit(decode_chunk, chunk, start, size))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


# --- worker processes writing into shared memory -------------------------------------

_attached: dict[str, SharedMemory] = {}


def _decode_into_shared(
    name: str, shape: tuple[int, ...], slot: int, row: int, paths: Sequence[Path], size: int
) -> Failures:
    """Runs in a worker: decode ``paths`` into rows ``row...`` of ring slot ``slot``."""
    if name not in _attached:
        for old in _attached.values():
            old.close()
        _attached.clear()
        _attached[name] = SharedMemory(name)
    ring: NDArray[np.uint8] = np.ndarray(shape, np.uint8, buffer=_attached[name].buf)
    return _decode_rows(paths, row, size, ring[slot])


@dataclass
class _InFlight:
    start: int
    count: int
    slot: int
    tasks: list[Future[Failures]]


class _Ring:
    """``slots`` batches of shared memory that worker processes decode into."""

    def __init__(self, pool: Executor, slots: int, batch_size: int, size: int) -> None:
        self.pool = pool
        self.size = size
        self.per_task = min(CHUNK, batch_size)
        self.shape = (slots, batch_size, size, size, 3)
        self.memory = SharedMemory(create=True, size=int(np.prod(self.shape)))
        self.array: NDArray[np.uint8] = np.ndarray(self.shape, np.uint8, buffer=self.memory.buf)
        self.free = deque(range(slots))

    def submit(self, paths: Sequence[Path], start: int) -> _InFlight:
        slot = self.free.popleft()
        tasks = [
            self.pool.submit(
                _decode_into_shared,
                self.memory.name,
                self.shape,
                slot,
                row,
                paths[row : row + self.per_task],
                self.size,
            )
            for row in range(0, len(paths), self.per_task)
        ]
        return _InFlight(start, len(paths), slot, tasks)

    def collect(self, batch: _InFlight) -> Batch:
        """Wait for a batch, copy its pixels out and free its slot."""
        failures = [failure for task in batch.tasks for failure in task.result()]
        failed = {row for row, _ in failures}
        kept = [row for row in range(batch.count) if row not in failed]
        slot = self.array[batch.slot]
        pixels = slot[kept] if failed else slot[: batch.count].copy()
        self.free.append(batch.slot)
        return Batch(
            pixels,
            [batch.start + row for row in kept],
            [(batch.start + row, why) for row, why in failures],
        )

    def close(self) -> None:
        del self.array
        self.memory.close()
        self.memory.unlink()


_pools: dict[int, ProcessPoolExecutor] = {}


def _process_pool(workers: int) -> ProcessPoolExecutor:
    """The decoding processes, started on first use and kept for the life of the program:
    starting them costs about a second, which every later pool scored would pay again."""
    if workers not in _pools:
        _shutdown()
        context = multiprocessing.get_context("spawn")
        _pools[workers] = ProcessPoolExecutor(workers, mp_context=context)
    return _pools[workers]


def _shutdown() -> None:
    for pool in _pools.values():
        pool.shutdown(wait=False, cancel_futures=True)
    _pools.clear()


atexit.register(_shutdown)


def _shared_memory_fits(size: int) -> bool:
    """Whether /dev/shm has room for ``size`` bytes (containers often give it 64 MB, and a
    worker writing past that dies of SIGBUS). Where there is no /dev/shm, assume so."""
    try:
        return shutil.disk_usage("/dev/shm").free > size
    except OSError:
        return True


def _process_batches(
    paths: Sequence[Path], size: int, batch_size: int, workers: int, slots: int
) -> Iterator[Batch]:
    """Worker processes decode each batch into a slot of a shared ring of ``slots``
    batches (enough to keep every worker busy while the consumer works on one); the batch
    is copied out when it is yielded, and its slot is reused."""
    ring = _Ring(_process_pool(workers), slots, batch_size, size)
    pending: deque[_InFlight] = deque()
    try:
        for start in range(0, len(paths), batch_size):
            if not ring.free:
                yield ring.collect(pending.popleft())
            pending.append(ring.submit(paths[start : start + batch_size], start))
        while pending:
            yield ring.collect(pending.popleft())
    except BrokenProcessPool as exc:
        _shutdown()  # start afresh next time
        raise PipelineError(
            "A process decoding images died (killed, out of memory, or crashed in a decoder). "
            "Nothing was lost: run the command again."
        ) from exc
    finally:
        for batch in pending:
            for task in batch.tasks:
                task.cancel()
        wait([task for batch in pending for task in batch.tasks])
        ring.close()
