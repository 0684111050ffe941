"""[embed] Fill the embedding cache for every item of the workspace, here or on Ray.

The backbone pass over the pool is the expensive step at scale: it runs once per backbone
and weights, and again after a fine-tune. ``local`` runs it in this process, as a round
does. ``ray`` runs the same decoder and backbone in a pool of Ray actors (Ray Data's
``map_batches``), each of which builds the backbone once and writes its features to a
shard file of its own in the cache's folder, on a local Ray started for the run or on the
cluster at ``--ray-address``. Row numbers and checksums come back to this process, which
indexes each batch in one transaction: a run killed at any point keeps every batch it
indexed, and running it again computes only the items still missing.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from al_pipeline.config import Config
from al_pipeline.errors import PipelineError
from al_pipeline.model.backbones import Backbone, workspace_backbone
from al_pipeline.model.checkpoints import find_checkpoint, load_checkpoint
from al_pipeline.model.embeddings import (
    EmbeddingCache,
    Failures,
    Files,
    ShardWriter,
    compute_here,
    embed_keys,
    pool_files,
    sha_keys,
)
from al_pipeline.model.inference import predict_padded, scoring_batch
from al_pipeline.model.loader import decode_chunk
from al_pipeline.progress import Progress, silent
from al_pipeline.store.state import State

ENGINES = ("local", "ray")
RAY_EXTRA = "pip install 'al-pipeline[ray]'"
# Items handed to Ray per block of its dataset at most (a worker takes a batch of them at a
# time); fewer when there are few items, so every worker gets some.
RAY_BLOCK_ROWS = 1024


class EngineError(PipelineError):
    """An embedding engine cannot run as asked."""


@dataclass(frozen=True)
class EmbedPlan:
    """How ``al embed`` runs.

    Attributes:
        engine: ``local`` (this process) or ``ray``.
        ray_address: A Ray cluster to join (``auto``, or ``HOST:PORT``); None starts a
            local Ray for the run.
        workers: Ray actors, each holding one backbone.
        gpus_per_worker: GPUs each actor asks Ray for (0: CPU only).
        batch_size: Images per backbone call (default: large on a GPU, 32 on a CPU).
    """

    engine: str = "local"
    ray_address: str | None = None
    workers: int = 2
    gpus_per_worker: float = 0.0
    batch_size: int | None = None

    def check(self) -> None:
        if self.engine not in ENGINES:
            raise EngineError(f"--engine {self.engine!r} is unknown: use local or ray.")
        if self.workers < 1:
            raise EngineError(f"--workers {self.workers} must be at least 1.")
        if not 0 <= self.gpus_per_worker < float("inf"):  # NaN fails this too
            raise EngineError(
                f"--gpus-per-worker {self.gpus_per_worker:g} must be 0 or more, such as 1 or "
                "0.5 (two workers share a GPU)."
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise EngineError(f"--batch-size {self.batch_size} must be at least 1.")


@dataclass(frozen=True)
class BackboneSource:
    """Where a worker gets the backbone: the checkpoint at ``checkpoint`` (a fine-tuned
    backbone), else the one the workspace config names. Small enough to send to Ray."""

    config: Config
    checkpoint: Path | None = None

    def build(self) -> Backbone:
        if self.checkpoint is not None:
            return load_checkpoint(self.checkpoint).backbone()
        return workspace_backbone(self.config)


@dataclass
class EmbedReport:
    """What ``al embed`` did."""

    engine: str
    backbone: str
    image_size: int
    items: int
    cached: int
    computed: int
    seconds: float
    workers: int
    failures: list[tuple[int, str]] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def current_source(config: Config, state: State) -> BackboneSource:
    """The backbone the next round scores with: the latest checkpoint's, else the
    workspace's."""
    row = state.checkpoint()
    if row is None:
        return BackboneSource(config)
    find_checkpoint(config, state, None)  # fits the workspace, or a clear error
    return BackboneSource(config, config.root / row.path)


def embed_workspace(
    config: Config, state: State, plan: EmbedPlan, progress: Progress = silent
) -> EmbedReport:
    """Compute and cache the features of every item not cached yet."""
    plan.check()
    if plan.engine == "ray":
        import_ray()  # before any work: a missing extra is one clear line
    source = current_source(config, state)
    backbone = source.build()
    items = state.item_keys()
    cache = EmbeddingCache(state, config.cache_dir, backbone)
    batch = plan.batch_size or scoring_batch()
    compute = (
        partial(compute_here, batch_size=batch)
        if plan.engine == "local"
        else partial(compute_on_ray, plan=plan, source=source, batch_size=batch)
    )
    started = time.perf_counter()
    embedded = embed_keys(cache, items.keys, pool_files(config, state, items), progress, compute)
    return EmbedReport(
        engine=plan.engine,
        backbone=backbone.name,
        image_size=backbone.image_size,
        items=len(items),
        cached=len(embedded.rows) - embedded.computed,  # items are unique by content
        computed=embedded.computed,
        seconds=round(time.perf_counter() - started, 2),
        workers=plan.workers if plan.engine == "ray" else 1,
        failures=[(int(items.ids[p]), reason) for p, reason in embedded.failures],
    )


def compute_on_ray(
    cache: EmbeddingCache,
    missing: NDArray[np.int64],
    files: Files,
    progress: Progress,
    *,
    plan: EmbedPlan,
    source: BackboneSource,
    batch_size: int,
) -> Failures:
    """The missing items' features from a pool of Ray actors, which write them to their
    shards; each batch is indexed here as it arrives."""
    if not len(missing):
        return []
    ray = import_ray()
    failures: Failures = []
    with ray_session(ray, plan):
        progress("Computing features on Ray", 0, len(missing))
        rows = max(1, min(RAY_BLOCK_ROWS, -(-len(missing) // (4 * plan.workers))))
        dataset = ray.data.from_arrow(list(_blocks(missing, files, rows)))
        results = dataset.map_batches(
            EmbedWorker,
            fn_constructor_args=(source, batch_size, cache.file),
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=plan.workers),
            num_cpus=1,
            num_gpus=plan.gpus_per_worker or None,
            batch_format="numpy",
        )
        done = 0
        for part in results.iter_batches(batch_size=None, batch_format="numpy"):
            ok = part["reason"] == ""
            if ok.any():
                cache.index_written(part["row"][ok], part["key"][ok], part["crc"][ok])
            failures += [
                (int(p), str(r))
                for p, r in zip(part["position"][~ok], part["reason"][~ok], strict=True)
            ]
            done += len(ok)
            progress("Computing features on Ray", done, len(missing))
    cache.record_shards()
    return failures


def _blocks(missing: NDArray[np.int64], files: Files, rows: int) -> Iterator[Any]:
    """The missing items as Arrow tables of position, content key and path, ``rows`` each
    (small enough that every worker gets several), built a block at a time."""
    import pyarrow as pa

    for start in range(0, len(missing), rows):
        positions = missing[start : start + rows]
        chunk = files(positions)
        yield pa.table(
            {
                "position": positions,
                "key": sha_keys([sha for sha, _ in chunk]),
                "path": [str(path) for _, path in chunk],
            }
        )


class EmbedWorker:
    """A Ray actor: builds the backbone once, then decodes and embeds batches of files
    with the same decoder and the same fixed batch shape as the local engine, and writes
    the features to a shard file of its own in the cache's folder. Only row numbers and
    checksums go back to the process that indexes them."""

    def __init__(self, source: BackboneSource, batch_size: int, cache_file: Path) -> None:
        self.backbone = source.build()
        self.batch_size = batch_size
        self.cache_file = cache_file
        self.writer: ShardWriter | None = None  # created with the first rows

    def __call__(self, batch: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        paths = [Path(str(p)) for p in batch["path"]]
        decoded = decode_chunk(paths, 0, self.backbone.image_size)
        features = np.zeros((len(decoded.indices), self.backbone.dim), np.float32)
        for start in range(0, len(decoded.indices), self.batch_size):
            pixels = decoded.pixels[start : start + self.batch_size]
            features[start : start + len(pixels)] = predict_padded(
                self.backbone.model, pixels, self.batch_size
            )
        rows = np.full(len(paths), -1, np.int64)
        crcs = np.full(len(paths), -1, np.int64)
        if decoded.indices:
            self.writer = self.writer or ShardWriter(self.cache_file)
            rows[decoded.indices], crcs[decoded.indices] = self.writer.write(features)
        reasons = np.array([""] * len(paths), dtype=object)
        for row, reason in decoded.failures:
            reasons[row] = reason
        return {
            "position": batch["position"],
            "key": batch["key"],
            "row": rows,
            "crc": crcs,
            "reason": reasons.astype(str),
        }


def import_ray() -> Any:
    """Ray, or a clear error naming the extra that installs it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise EngineError(
            f"--engine ray needs Ray, which is not installed ({exc}). Install it with "
            f"{RAY_EXTRA}, or use --engine local."
        ) from exc
    return ray


@contextmanager
def ray_session(ray: Any, plan: EmbedPlan) -> Iterator[None]:
    """Ray for one run: the session already open in this process, the cluster at
    ``plan.ray_address``, or a local Ray started here and stopped afterwards."""
    started = not ray.is_initialized()
    if started:
        import keras

        try:
            ray.init(
                address=plan.ray_address,
                num_cpus=None if plan.ray_address else max(plan.workers, os.cpu_count() or 1),
                include_dashboard=False,
                log_to_driver=False,
                logging_level="ERROR",
                runtime_env={"env_vars": {"KERAS_BACKEND": keras.backend.backend()}},
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = plan.ray_address or "a local Ray"
            raise EngineError(f"Cannot start or join {where}: {exc}") from exc
    try:
        _check_resources(ray, plan)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        context.print_on_execution_start = False
        for name in ("ray", "ray.data"):  # our bar shows the progress
            logging.getLogger(name).setLevel(logging.ERROR)
        yield
    finally:
        if started:
            ray.shutdown()


def _check_resources(ray: Any, plan: EmbedPlan) -> None:
    """Refuse a plan the cluster can never place (Ray would wait for it forever)."""
    resources = ray.cluster_resources()
    gpus = plan.workers * plan.gpus_per_worker
    if gpus > resources.get("GPU", 0):
        raise EngineError(
            f"{plan.workers} worker(s) x --gpus-per-worker {plan.gpus_per_worker} need "
            f"{gpus:g} GPU(s); the Ray cluster has {resources.get('GPU', 0):g}. Lower "
            "--workers or --gpus-per-worker (0 runs on CPUs)."
        )
    if plan.workers > resources.get("CPU", 0):
        raise EngineError(
            f"--workers {plan.workers} needs {plan.workers} CPU(s); the Ray cluster has "
            f"{resources.get('CPU', 0):g}. Lower --workers."
        )
