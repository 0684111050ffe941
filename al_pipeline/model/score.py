"""[score] Class probabilities for workspace items: cached features through a model's head.

After a retrain only the head runs: the backbone's features come from the embedding cache
and are computed just for items seen for the first time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from al_pipeline.config import Config
from al_pipeline.errors import PipelineError
from al_pipeline.model.backbones import Backbone, build_backbone, parse_weights
from al_pipeline.model.devices import resolve_precision
from al_pipeline.model.embeddings import Embedded, embed
from al_pipeline.model.network import Checkpoint, load_checkpoint, predict_proba
from al_pipeline.progress import Progress, silent
from al_pipeline.store.models import CheckpointRow
from al_pipeline.store.state import State


class NoCheckpointError(PipelineError):
    """No trained model to score or evaluate with."""


@dataclass
class Scored:
    """Probabilities for the readable items of a request, in request order.

    Attributes:
        probabilities: ``(len(positions), classes)``.
        positions: Position in the request of each row.
        computed: Items whose backbone features had to be computed (0 = all cached).
        failures: ``(position, reason)`` for items that could not be read.
    """

    probabilities: NDArray[np.float32]
    positions: NDArray[np.int64]
    computed: int
    failures: list[tuple[int, str]] = field(default_factory=list)


def workspace_backbone(config: Config) -> Backbone:
    """The backbone the workspace config asks for, with its weights."""
    weights = config.weights
    if weights not in ("imagenet", "none") and not Path(weights).is_absolute():
        weights = str(config.root / weights)
    return build_backbone(
        config.backbone,
        config.image_size,
        parse_weights(weights),
        config.keras_home,
        config.offline,
        resolve_precision(config.precision),
    )


def find_checkpoint(
    config: Config, state: State, tag: str | None
) -> tuple[CheckpointRow, Checkpoint]:
    """Load the checkpoint with ``tag`` (default: the latest) and check it fits."""
    row = state.checkpoint(tag)
    if row is None:
        known = ", ".join(r.tag for r in state.checkpoints()) or "none yet"
        what = f"No checkpoint '{tag}'" if tag else "No trained model yet"
        raise NoCheckpointError(f"{what} (checkpoints: {known}). Train one with 'al train'.")
    checkpoint = load_checkpoint(config.root / row.path)
    if tuple(checkpoint.meta.classes) != config.classes:
        raise NoCheckpointError(
            f"Checkpoint '{row.tag}' was trained for classes {checkpoint.meta.classes}, "
            f"but the workspace has {list(config.classes)}. Train a new one with 'al train'."
        )
    return row, checkpoint


def head_probabilities(checkpoint: Checkpoint, embedded: Embedded) -> NDArray[np.float32] | None:
    """The checkpoint's head over cached features (None when there are none)."""
    return embedded.map(partial(predict_proba, checkpoint.head))


def score(
    config: Config,
    state: State,
    checkpoint: Checkpoint,
    items: Sequence[tuple[str, Path]],
    progress: Progress = silent,
) -> Scored:
    """Probabilities for ``(sha256, path)`` items with a checkpoint's backbone and head."""
    embedded = embed(state, config.cache_dir, checkpoint.backbone(), items, progress)
    probabilities = head_probabilities(checkpoint, embedded)
    if probabilities is None:
        probabilities = np.zeros((0, len(config.classes)), np.float32)
    return Scored(probabilities, embedded.positions, embedded.computed, embedded.failures)
