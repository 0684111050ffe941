"""Filling the embedding cache: the local engine against Ray workers, over the same photos.

Two fresh workspaces get the same ``--images`` chandrikadeb7 photos; ``al embed`` fills
one with ``--engine local`` and the other with ``--engine ray`` (a local Ray with
``--workers`` CPU workers, started before the clock starts; each worker builds its own
backbone, which is timed). Prints and saves images per second for each, the seconds Ray
took to start, and whether the two caches hold the same features bit for bit.

    python benchmarks/bench_embed_engines.py [--images 1000] [--workers 2] [--image-size 224]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import CHANDRIKADEB7, environment, keras_home_with_weights, save


def workspace(root: Path, photos: Path, image_size: int, keras_home: Path) -> Any:
    from al_pipeline.ingest.folders import add_folder
    from al_pipeline.store.state import open_state
    from al_pipeline.store.workspace import init_workspace

    config = init_workspace(root, "with_mask,without_mask").config
    config = replace(config, image_size=image_size, keras_home=keras_home)
    with open_state(config.database) as state:
        add_folder(config, state, photos)
    return config


def run(config: Any, plan: Any) -> tuple[Any, Any]:
    """Embed the workspace with ``plan``; the report and every item's features."""
    from al_pipeline.model.backbones import workspace_backbone
    from al_pipeline.model.embeddings import EmbeddingCache
    from al_pipeline.model.engines import embed_workspace
    from al_pipeline.store.state import open_state

    with open_state(config.database) as state:
        report = embed_workspace(config, state, plan)
        cache = EmbeddingCache(state, config.cache_dir, workspace_backbone(config))
        features = cache.read(cache.lookup(state.item_keys().keys))
    return report, features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    keras_home = keras_home_with_weights()

    import numpy as np
    import ray

    from al_pipeline.model.engines import EmbedPlan

    directory = Path(tempfile.mkdtemp(prefix="bench_embed_engines-"))
    photos = directory / "photos"
    sources = sorted(p for p in CHANDRIKADEB7.rglob("*.jp*g") if "augmented" not in p.name)
    for path in sources[: args.images]:
        (photos / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, photos / path.parent.name / path.name)
    local = workspace(directory / "local", photos, args.image_size, keras_home)
    on_ray = workspace(directory / "ray", photos, args.image_size, keras_home)

    local_report, local_features = run(local, EmbedPlan(engine="local"))
    print(f"local: {local_report.computed} images in {local_report.seconds} s", flush=True)
    started = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    ray_report, ray_features = run(on_ray, EmbedPlan(engine="ray", workers=args.workers))
    ray.shutdown()
    print(f"ray: {ray_report.computed} images in {ray_report.seconds} s (+{ray_start:.1f} s start)")
    identical = bool(np.array_equal(local_features, ray_features))
    shutil.rmtree(directory)
    engines = {
        name: {
            "images": report.computed,
            "seconds": report.seconds,
            "images_per_second": round(report.per_second, 1),
            "workers": report.workers,
        }
        for name, report in (("local", local_report), ("ray", ray_report))
    }
    result = {
        "benchmark": "embed_engines",
        "images": args.images,
        "image_size": args.image_size,
        "environment": environment(),
        "engines": engines,
        "ray_start_seconds": round(ray_start, 2),
        "identical_features": identical,
    }
    print(f"features identical: {identical}")
    print(f"saved {save(f'bench_embed_engines_{args.image_size}', result)}")


if __name__ == "__main__":
    main()
