"""Scoring throughput, with the batch size and precision the pipeline picks on this machine.

Columns, images/second on the same files at the same size:
  decode-only   the loader alone: files to uint8 batches (the host's ceiling here);
                (decode_threads_only: the same on threads, as before worker processes;
                decode_raw_processes: plain worker processes that decode and return
                nothing, so no pixels travel: the bound for any loader)
  model-only    the classifier on uint8 batches already in memory;
  files         files to probabilities through the real loader (``predict_files``);
  cache         re-scoring from the embedding cache (the head alone).
Targets: files >= 85 % of decode-only and >= 90 % of min(decode-only, model-only).

    python benchmarks/bench_scoring.py [--images 1000] [--sizes 224,160] [--data DIR]
        [--files LIST] [--batch N] [--precision P]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import (
    CHANDRIKADEB7,
    MOBILENET,
    environment,
    image_files,
    keras_home_with_weights,
    save,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--sizes", default="224,160")
    parser.add_argument("--data", type=Path, default=CHANDRIKADEB7)
    parser.add_argument("--files", type=Path, help="a list of paths under --data to use")
    parser.add_argument("--weights", type=Path, default=MOBILENET)
    parser.add_argument("--batch", type=int, help="default: what the pipeline picks")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--repeat", type=int, default=1, help="pass over the files N times")
    args = parser.parse_args()
    home = keras_home_with_weights(args.weights)

    from al_pipeline.ingest.folders import add_folder
    from al_pipeline.model.devices import resolve_precision
    from al_pipeline.model.inference import scoring_batch
    from al_pipeline.store.state import State
    from al_pipeline.store.workspace import init_workspace

    args.data = args.data.resolve()
    files = image_files(args.data, args.files)[: args.images] * args.repeat
    config = init_workspace(Path(tempfile.mkdtemp()) / "ws", "with_mask,without_mask").config
    config = replace(config, keras_home=home)
    batch = args.batch or scoring_batch()
    precision = resolve_precision(args.precision)
    rows = []
    with State(config.database) as state:
        pool = add_folder(config, state, args.data).pool
        wanted = set(files)
        items = [(i.sha256, i.path) for i in state.items_in_pool(pool) if i.path in wanted]
        for size in (int(s) for s in args.sizes.split(",")):
            row = measure(config, state, files, items, size, batch, precision)
            rows.append(row)
            print(
                f"{size:>4}px batch {batch} {precision}: decode-only {row['decode_only']:8.1f}"
                f"  model-only {row['model_only']:8.1f}  files {row['files']:8.1f}"
                f" ({row['files_over_decode']:.0%} of decode-only)  cache {row['cache']:10.1f}"
                " img/s",
                flush=True,
            )
    result = {"benchmark": "scoring", "environment": environment(), "rows": rows}
    print(f"saved {save('bench_scoring', result)}")


def measure(
    config: Any,
    state: Any,
    files: list[Path],
    items: list[tuple[str, Path]],
    size: int,
    batch: int,
    precision: str,
) -> dict[str, Any]:
    import numpy as np

    from al_pipeline.model.backbones import Weights, build_backbone
    from al_pipeline.model.checkpoints import Checkpoint
    from al_pipeline.model.inference import predict_padded
    from al_pipeline.model.loader import image_batches, uses_processes
    from al_pipeline.model.network import build_classifier, build_head
    from al_pipeline.model.predict import predict_files
    from al_pipeline.model.score import score
    from al_pipeline.records import CheckpointMeta

    backbone = build_backbone(
        "mobilenet_v2", size, Weights("imagenet"), config.keras_home, precision=precision
    )
    model = build_classifier(backbone, build_head(backbone.dim, 2))
    meta = CheckpointMeta(
        tag="bench",
        backbone="mobilenet_v2",
        image_size=size,
        features_digest=backbone.weights_digest,
        classes=list(config.classes),
        precision=precision,
    )
    checkpoint = Checkpoint(Path("."), model, meta)

    for _ in image_batches(files[: batch * 2], size, batch, processes=uses_processes(len(files))):
        pass  # start the decoding workers
    start = time.perf_counter()
    decoded = [b.pixels for b in image_batches(files, size, batch)]
    decode_only = len(files) / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in image_batches(files, size, batch, processes=False):
        pass
    decode_threads = len(files) / (time.perf_counter() - start)
    decode_raw = raw_decode(files, size)

    predict_padded(model, decoded[0], batch)  # compile
    start = time.perf_counter()
    for pixels in decoded:
        predict_padded(model, pixels, batch)
    model_only = len(files) / (time.perf_counter() - start)
    del decoded

    predict_files(config, checkpoint, files[:batch])  # warm
    start = time.perf_counter()
    predictions = predict_files(config, checkpoint, files)
    loader = len(files) / (time.perf_counter() - start)
    assert all(p.label for p in predictions)

    score(config, state, checkpoint, items)
    start = time.perf_counter()
    cached = score(config, state, checkpoint, items)
    cache = len(items) / (time.perf_counter() - start)
    assert cached.computed == 0 and np.isfinite(cached.probabilities).all()
    return {
        "size": size,
        "images": len(files),
        "batch": batch,
        "precision": precision,
        "decode_only": round(decode_only, 1),
        "decode_threads_only": round(decode_threads, 1),
        "decode_raw_processes": round(decode_raw, 1),
        "model_only": round(model_only, 1),
        "files": round(loader, 1),
        "cache": round(cache, 1),
        "files_over_decode": round(loader / decode_only, 3),
        "files_over_slower": round(loader / min(decode_only, model_only), 3),
    }


def _decode_only(paths: list[Path], size: int) -> int:
    from al_pipeline.model.loader import decode

    for path in paths:
        decode(path, size)
    return len(paths)


def raw_decode(files: list[Path], size: int) -> float:
    """Images/second decoded by plain worker processes that send no pixels back."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from al_pipeline.model.loader import PROCESS_WORKERS

    chunks = [files[s : s + 32] for s in range(0, len(files), 32)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(PROCESS_WORKERS, mp_context=context) as pool:
        list(pool.map(_decode_only, chunks[:PROCESS_WORKERS], [size] * PROCESS_WORKERS))
        start = time.perf_counter()
        done = sum(pool.map(_decode_only, chunks, [size] * len(chunks)))
        return done / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
