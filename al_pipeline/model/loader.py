"""Images in, pixel batches out: Pillow decoding on worker threads, in bounded batches.

Only a few batches are in memory at once, so a pool of any size streams through the model
in bounded memory; decoding the next batches overlaps with the model working on this one.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from al_pipeline.ingest.images import require_regular_file, to_rgb

WORKERS = min(8, os.cpu_count() or 1)


@dataclass
class Batch:
    """Decoded pixels for the readable images of one chunk of paths.

    Attributes:
        pixels: ``(n, size, size, 3)`` float32 array in [0, 255].
        indices: Positions (in the full path list) of the rows of ``pixels``.
        failures: ``(position, reason)`` for each file that could not be decoded.
    """

    pixels: NDArray[np.float32]
    indices: list[int]
    failures: list[tuple[int, str]] = field(default_factory=list)


def decode(path: Path, size: int) -> NDArray[np.uint8]:
    """Decode one file to a ``size`` x ``size`` RGB array (EXIF-oriented)."""
    with Image.open(require_regular_file(path)) as image:
        image.draft("RGB", (size, size))
        image.load()
        rgb = to_rgb(image)
    return np.asarray(rgb.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def _decode_chunk(paths: Sequence[Path], offset: int, size: int) -> Batch:
    rows: list[NDArray[np.uint8]] = []
    indices: list[int] = []
    failures: list[tuple[int, str]] = []
    for position, path in enumerate(paths, start=offset):
        try:
            rows.append(decode(path, size))
            indices.append(position)
        except UnidentifiedImageError:
            failures.append((position, "not an image file"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            failures.append((position, f"cannot decode ({exc})"))
    pixels = (np.stack(rows) if rows else np.zeros((0, size, size, 3), np.uint8)).astype(np.float32)
    return Batch(pixels, indices, failures)


def image_batches(
    paths: Sequence[Path],
    size: int,
    batch_size: int = 32,
    workers: int = WORKERS,
    prefetch: int | None = None,
) -> Iterator[Batch]:
    """Yield decoded batches in order, decoding up to ``prefetch`` batches ahead (default:
    one per worker, so every core decodes while the model runs)."""
    prefetch = workers if prefetch is None else prefetch
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[Batch]] = deque()
        for start in range(0, len(paths), batch_size):
            pending.append(
                pool.submit(_decode_chunk, paths[start : start + batch_size], start, size)
            )
            if len(pending) > prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
