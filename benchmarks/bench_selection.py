"""Selection over a large pool: 1,000,000 cached 1,280-d embeddings (float16 on disk).

Times scoring the whole pool with a head (chunks read through a memory map) and then each
strategy's selection, and reports the process's peak memory. Target for margin: <= 5 s
and <= 4 GiB.

    python benchmarks/bench_selection.py [--rows 1000000] [--size 100]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import environment, save


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()

    import numpy as np

    from al_pipeline.model import build_head, predict_proba
    from al_pipeline.strategies import Pool, select

    path = Path(tempfile.mkdtemp()) / "pool.f16"
    rng = np.random.default_rng(0)
    with path.open("wb") as handle:
        for _ in range(0, args.rows, 50_000):
            handle.write(rng.normal(size=(50_000, args.dim)).astype(np.float16).tobytes())
    table = np.memmap(path, dtype=np.float16, mode="r").reshape(-1, args.dim)[: args.rows]
    head = build_head(args.dim, 2)
    predict_proba(head, np.zeros((8, args.dim), np.float32))
    baseline = peak_gib()
    print(
        f"pool: {args.rows:,} x {args.dim} float16 ({path.stat().st_size / 1024**3:.2f} GiB on "
        f"disk); process peak before scoring {baseline:.2f} GiB",
        flush=True,
    )

    started = time.perf_counter()
    chunk = 65_536
    probabilities = np.concatenate(
        [
            predict_proba(head, np.asarray(table[s : s + chunk], dtype=np.float32))
            for s in range(0, args.rows, chunk)
        ]
    )
    scoring = time.perf_counter() - started
    print(f"scoring with the head: {scoring:.2f} s", flush=True)

    def read(positions: np.ndarray) -> np.ndarray:
        return np.asarray(table[positions], dtype=np.float32)

    rows: dict[str, object] = {"scoring_seconds": round(scoring, 2)}
    for name in ("margin", "entropy", "least_confidence", "random", "diverse"):
        pool = Pool(probabilities, read, args.rows, read(np.arange(200)), np.random.default_rng(0))
        started = time.perf_counter()
        picked = select(name, pool, args.size)
        seconds = time.perf_counter() - started
        assert len(set(picked.tolist())) == args.size
        rows[name] = {
            "selection_seconds": round(seconds, 3),
            "with_scoring_seconds": round(seconds + scoring, 2),
        }
        print(
            f"{name:>17}: selection {seconds:6.3f} s, with scoring {seconds + scoring:5.2f} s",
            flush=True,
        )
    cold = Pool(None, read, args.rows, rng=np.random.default_rng(0))
    started = time.perf_counter()
    select("margin", cold, args.size)
    rows["cold_start_seconds"] = round(time.perf_counter() - started, 2)
    rows["peak_memory_gib"] = round(peak_gib(), 2)
    print(
        f"cold start (k-means on a 10,000 sample): {rows['cold_start_seconds']} s; process "
        f"peak memory {rows['peak_memory_gib']} GiB",
        flush=True,
    )
    path.unlink()
    result = {
        "benchmark": "selection",
        "rows": args.rows,
        "dim": args.dim,
        "size": args.size,
        "environment": environment(),
        "results": rows,
    }
    print(f"saved {save('bench_selection', result)}")


if __name__ == "__main__":
    main()
