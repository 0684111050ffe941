"""Scoring throughput: the backbone alone, files through the real loader, and the cache.

(a) the backbone on in-memory tensors (the limit), (b) JPEG files on disk to
probabilities through the real loader (``predict_files``), (c) re-scoring from the
embedding cache (the head alone). Targets: (b) >= 90 % of (a), (c) >= 50x (b).

    python benchmarks/bench_scoring.py [--images 1000] [--sizes 224,160] [--data DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import CHANDRIKADEB7, MOBILENET, environment, keras_home_with_weights, save


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--sizes", default="224,160")
    parser.add_argument("--data", type=Path, default=CHANDRIKADEB7)
    parser.add_argument("--weights", type=Path, default=MOBILENET)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    home = keras_home_with_weights(args.weights)

    import numpy as np

    from al_pipeline.ingest.folders import add_folder
    from al_pipeline.ingest.images import is_image_name
    from al_pipeline.model.backbones import Weights, build_backbone
    from al_pipeline.model.checkpoints import Checkpoint
    from al_pipeline.model.embeddings import predict_padded
    from al_pipeline.model.loader import decode
    from al_pipeline.model.network import build_classifier, build_head
    from al_pipeline.model.predict import predict_files
    from al_pipeline.model.score import score
    from al_pipeline.store.state import State
    from al_pipeline.store.workspace import init_workspace

    files = sorted(p for p in args.data.rglob("*") if p.is_file() and is_image_name(p))
    files = files[: args.images]
    config = init_workspace(Path(tempfile.mkdtemp()) / "ws", "with_mask,without_mask").config
    config = replace(config, keras_home=home)
    rows = []
    with State(config.database) as state:
        pool = add_folder(config, state, args.data).pool
        wanted = set(files)
        items = [(i.sha256, i.path) for i in state.items_in_pool(pool) if i.path in wanted]
        for size in (int(s) for s in args.sizes.split(",")):
            backbone = build_backbone("mobilenet_v2", size, Weights("imagenet"), home)
            head = build_head(backbone.dim, 2)
            model = build_classifier(backbone, head)
            meta = {
                "backbone": "mobilenet_v2",
                "image_size": size,
                "pretrained": True,
                "features_digest": backbone.weights_digest,
                "classes": list(config.classes),
            }
            checkpoint = Checkpoint(Path("."), model, meta)
            pixels = np.stack([decode(p, size) for p in files]).astype(np.float32)
            predict_padded(model, pixels[: args.batch], args.batch)
            start = time.perf_counter()
            for s in range(0, len(pixels), args.batch):
                predict_padded(model, pixels[s : s + args.batch], args.batch)
            model_only = len(files) / (time.perf_counter() - start)
            predict_files(config, checkpoint, files[:64])
            start = time.perf_counter()
            predictions = predict_files(config, checkpoint, files)
            loader = len(files) / (time.perf_counter() - start)
            assert all(p.label for p in predictions)
            score(config, state, checkpoint, items)
            start = time.perf_counter()
            cached = score(config, state, checkpoint, items)
            cache = len(items) / (time.perf_counter() - start)
            assert cached.computed == 0
            rows.append(
                {
                    "size": size,
                    "images": len(files),
                    "a_model_only_img_s": round(model_only, 1),
                    "b_files_to_probabilities_img_s": round(loader, 1),
                    "c_rescoring_from_cache_img_s": round(cache, 1),
                    "b_over_a": round(loader / model_only, 3),
                    "c_over_b": round(cache / loader, 1),
                }
            )
            print(
                f"{size:>4}px  (a) model only {model_only:8.1f} img/s  (b) files {loader:8.1f}"
                f" img/s ({loader / model_only:5.1%} of a)  (c) cache {cache:10.1f} img/s"
                f" ({cache / loader:6.1f}x b)",
                flush=True,
            )
    result = {"benchmark": "scoring", "environment": environment(), "rows": rows}
    print(f"saved {save('bench_scoring', result)}")


if __name__ == "__main__":
    main()
