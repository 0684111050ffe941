"""The store at scale: a synthetic pool of 10,000,000 items, timed through the round's path.

Builds a workspace database with ``--items`` items (fake paths and content hashes, one
pool) through the store's own insert, and their 1,280-d float16 embeddings (random
values) through the embedding cache, then times each step a round takes before anyone
labels, with the process's peak memory after each:

- the selectable items (``State.selectable``: item ids and content keys as columns);
- opening the embedding cache's index and matching the items to its rows (``embed_pool``,
  all cached);
- scoring the pool with a head (``Embedded.map``: the feature file streamed in row order);
- selecting 100 by margin;
- ``al pool stats`` (``State.pool_stats``).

It also reads 4 GiB of the feature file with direct I/O (no page cache), the disk's rate:
scoring cannot read faster than that.

Target (issue 14) on the 2-core machine: margin selection with scoring <= 30 s and
<= 4 GiB for 10M items. Building the pool is timed too, but is not a target. The pool is
written under ``--dir`` (default: a temporary folder; 10M items take about 29 GiB there),
by another process, so the peak memory reported is the round's own, and removed
afterwards unless ``--keep``. ``--cold`` drops the feature file from the page
cache before scoring (Linux), so scoring reads it from disk, as a round on a
pool larger than memory does.

    python benchmarks/bench_scale.py [--items 10000000] [--dir PATH] [--keep] [--cold]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import environment, save

T = TypeVar("T")
CHUNK = 100_000
# What a round does before anyone labels; the target is on their sum.
ROUND_STEPS = (
    "selectable items",
    "cache index + match",
    "scoring with the head",
    "margin selection",
)


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def timed(steps: dict[str, Any], name: str, fn: Callable[[], T]) -> T:
    """Run one step, record its seconds and the process's peak memory after it."""
    started = time.perf_counter()
    value = fn()
    steps[name] = {
        "seconds": round(time.perf_counter() - started, 2),
        "peak_gib": round(peak_gib(), 2),
    }
    print(f"{name:>24}: {steps[name]['seconds']:8.2f} s, peak {steps[name]['peak_gib']} GiB")
    return value


def build(state: Any, cache: Any, items: int, dim: int) -> None:
    """``items`` items under one pool, and their embeddings, in chunks."""
    import hashlib

    import numpy as np

    from al_pipeline.model.embeddings import sha_keys
    from al_pipeline.store.items import ImageFile, NewItem

    pool = state.add_pool("synthetic", Path("pools/synthetic"))
    rng = np.random.default_rng(0)
    for start in range(0, items, CHUNK):
        ids = range(start, min(items, start + CHUNK))
        shas = [hashlib.sha256(i.to_bytes(8, "little")).hexdigest() for i in ids]
        state.insert_items(
            pool.id,
            [
                NewItem(f"{i // 1000:05d}/{i:08d}.jpg", ImageFile(sha, 50_000, 0, "JPEG", 224, 224))
                for i, sha in zip(ids, shas, strict=True)
            ],
        )
        features = rng.standard_normal((len(shas), dim), dtype=np.float32).astype(np.float16)
        cache.append(sha_keys(shas), features)
        if start // CHUNK % 10 == 0:
            print(f"built {start + len(shas):,} / {items:,}", flush=True)


def drop_page_cache(file: Path) -> None:
    """Evict ``file`` from the page cache (needs no root), so scoring reads it from disk."""
    import os

    fd = os.open(file, os.O_RDONLY)
    try:
        os.fdatasync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    print(f"evicted {file.name} from the page cache", flush=True)


def disk_read_rate(file: Path, gib: int = 4) -> float | None:
    """GB/s reading ``gib`` GiB from the middle of ``file`` straight from the disk
    (``O_DIRECT``, no page cache): the ceiling for scoring from that disk. None where
    direct reads are not supported."""
    import mmap
    import os

    if not hasattr(os, "O_DIRECT"):
        return None
    chunk = 16 << 20
    buffer = mmap.mmap(-1, chunk)  # page-aligned, as O_DIRECT needs
    fd = os.open(file, os.O_RDONLY | os.O_DIRECT)
    try:
        start = (file.stat().st_size // 2) // chunk * chunk
        started = time.perf_counter()
        done = sum(os.preadv(fd, [buffer], start + i * chunk) for i in range((gib << 30) // chunk))
        return round(done / (time.perf_counter() - started) / 1e9, 2)
    except OSError:
        return None
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--dir", type=Path, help="where to build the pool")
    parser.add_argument("--keep", action="store_true", help="keep the pool (reuse with --dir)")
    parser.add_argument("--cold", action="store_true", help="score from disk, not page cache")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    from al_pipeline.config import Config
    from al_pipeline.model.backbones import Weights, build_backbone
    from al_pipeline.model.embeddings import EmbeddingCache, embed_pool
    from al_pipeline.model.network import build_head, predict_proba
    from al_pipeline.selection.strategies import Pool, get_strategy, select
    from al_pipeline.store.state import open_state

    directory = args.dir or Path(tempfile.mkdtemp(prefix="bench_scale-"))
    directory.mkdir(parents=True, exist_ok=True)
    backbone = build_backbone("mobilenet_v2", 96, Weights("none"), directory)
    steps: dict[str, Any] = {}
    state = open_state(directory / "state.sqlite3")
    if args.build_only:
        if state.item_count():
            raise SystemExit(f"{directory} holds another pool; give an empty --dir.")
        cache = EmbeddingCache(state, directory, backbone)
        timed(steps, "build (not a target)", lambda: build(state, cache, args.items, backbone.dim))
        state.close()
        return
    if state.item_count() != args.items:
        # In another process, so that the round's peak memory is its own.
        started = time.perf_counter()
        command = [sys.executable, __file__, "--build-only", "--items", str(args.items)]
        subprocess.run([*command, "--dir", str(directory)], check=True)
        steps["build (not a target)"] = {"seconds": round(time.perf_counter() - started, 2)}
        state.close()
        state = open_state(directory / "state.sqlite3")
    baseline = peak_gib()
    print(f"peak before the round's steps: {baseline:.2f} GiB", flush=True)

    items = timed(steps, "selectable items", state.selectable)
    config = Config(directory, "bench_scale", ("a", "b", "c"), cache_dir=directory)
    embedded = timed(
        steps, "cache index + match", lambda: embed_pool(config, state, backbone, items)
    )
    disk = disk_read_rate(embedded.cache.file)
    print(f"reading the feature file straight from the disk: {disk} GB/s", flush=True)
    if args.cold:
        drop_page_cache(embedded.cache.file)
    assert embedded.computed == 0 and len(embedded.rows) == args.items
    head = build_head(backbone.dim, 3)
    probabilities = timed(
        steps, "scoring with the head", lambda: embedded.map(partial(predict_proba, head))
    )
    assert probabilities is not None
    pool = Pool(probabilities, embedded.cache.read, len(embedded.rows))
    picked, _ = timed(steps, "margin selection", lambda: select(get_strategy("margin"), pool, 100))
    assert len(set(picked.tolist())) == args.size
    stats = timed(steps, "pool stats", state.pool_stats)
    assert sum(s.items for s in stats) == args.items
    round_seconds = sum(steps[name]["seconds"] for name in ROUND_STEPS)
    state.close()
    on_disk = sum(f.stat().st_size for f in directory.rglob("*") if f.is_file())
    if not args.keep:
        shutil.rmtree(directory)
    result = {
        "benchmark": "scale",
        "items": args.items,
        "dim": backbone.dim,
        "size": args.size,
        "cold": args.cold,
        "disk_read_gb_per_s": disk,
        "environment": environment(),
        "disk_gib": round(on_disk / 1024**3, 2),
        "steps": steps,
        "round_seconds": round(round_seconds, 2),
        "peak_memory_gib": round(peak_gib(), 2),
        "target": {"round_seconds": 30, "peak_memory_gib": 4},
    }
    print(
        f"round before labelling (items, index, scoring, margin): {result['round_seconds']} s;"
        f" peak {result['peak_memory_gib']} GiB; {result['disk_gib']} GiB on disk"
    )
    print(f"saved {save(f'bench_scale_{args.items}', result)}")


if __name__ == "__main__":
    main()
