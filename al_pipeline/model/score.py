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
from al_pipeline.model.checkpoints import Checkpoint
from al_pipeline.model.embeddings import Embedded, embed
from al_pipeline.model.network import predict_proba
from al_pipeline.progress import Progress, silent
from al_pipeline.store.state import State


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
