"""Selection over a large pool: 1,000,000 cached 1,280-d embeddings (float16 on disk).

Writes the rows through the project's embedding cache (MobileNetV2's 1,280-d features,
random values), then times what a round does: opening the cache index, scoring the whole
pool with a head (``Embedded.map``, chunks read through the memory map) and each strategy's
selection, and reports the process's peak memory. Target for margin: <= 5 s
and <= 4 GiB.

    python benchmarks/bench_selection.py [--rows 1000000] [--size 100]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import environment, save


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()

    import numpy as np
    from numpy.typing import NDArray

    from al_pipeline.model.backbones import Weights, build_backbone
    from al_pipeline.model.embeddings import Embedded, EmbeddingCache
    from al_pipeline.model.network import build_head, predict_proba
    from al_pipeline.selection.strategies import Pool, get_strategy, select
    from al_pipeline.store.state import open_state

    directory = Path(tempfile.mkdtemp())
    backbone = build_backbone("mobilenet_v2", 96, Weights("none"), directory)
    dim = backbone.dim
    state = open_state(directory / "state.sqlite3")
    cache = EmbeddingCache(state, directory, backbone)
    rng = np.random.default_rng(0)
    step = 50_000
    for start in range(0, args.rows, step):
        rows = min(step, args.rows - start)
        features = rng.normal(size=(rows, dim)).astype(np.float16)
        cache.append(np.arange(start, start + rows, dtype=np.int64), features)
    started = time.perf_counter()
    cache = EmbeddingCache(state, directory, backbone)
    opening = time.perf_counter() - started
    embedded = Embedded(cache, np.arange(args.rows), np.arange(args.rows), computed=0)
    table = np.memmap(cache.file, dtype=np.float16, mode="r").reshape(-1, dim)
    head = build_head(dim, 2)
    baseline = peak_gib()
    print(
        f"pool: {args.rows:,} x {dim} float16 ({cache.file.stat().st_size / 1024**3:.2f} "
        f"GiB on disk); opening the cache index {opening:.2f} s; process peak before scoring "
        f"{baseline:.2f} GiB",
        flush=True,
    )

    started = time.perf_counter()
    probabilities = embedded.map(partial(predict_proba, head))
    assert probabilities is not None
    scoring = time.perf_counter() - started
    print(f"scoring with the head: {scoring:.2f} s", flush=True)

    def read(positions: NDArray[np.int64]) -> NDArray[np.float32]:
        return np.asarray(table[positions], dtype=np.float32)

    figures: dict[str, object] = {
        "cache_index_seconds": round(opening, 2),
        "scoring_seconds": round(scoring, 2),
    }
    for name in ("margin", "entropy", "least_confidence", "random", "diverse"):
        pool = Pool(probabilities, read, args.rows, read(np.arange(200)), np.random.default_rng(0))
        started = time.perf_counter()
        picked, _ = select(get_strategy(name), pool, args.size)
        seconds = time.perf_counter() - started
        assert len(set(picked.tolist())) == args.size
        figures[name] = {
            "selection_seconds": round(seconds, 3),
            "with_scoring_seconds": round(seconds + scoring, 2),
        }
        print(
            f"{name:>17}: selection {seconds:6.3f} s, with scoring {seconds + scoring:5.2f} s",
            flush=True,
        )
    cold = Pool(None, read, args.rows, rng=np.random.default_rng(0))
    started = time.perf_counter()
    select(get_strategy("margin"), cold, args.size)
    figures["cold_start_seconds"] = round(time.perf_counter() - started, 2)
    figures["peak_memory_gib"] = round(peak_gib(), 2)
    print(
        f"cold start (k-means on a 10,000 sample): {figures['cold_start_seconds']} s; process "
        f"peak memory {figures['peak_memory_gib']} GiB",
        flush=True,
    )
    state.close()
    shutil.rmtree(directory)
    result = {
        "benchmark": "selection",
        "rows": args.rows,
        "dim": dim,
        "size": args.size,
        "environment": environment(),
        "results": figures,
    }
    print(f"saved {save('bench_selection', result)}")


if __name__ == "__main__":
    main()
