"""The labeller seam: push a round's queue out, pull whatever labels came back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from al_pipeline.store.labels import PulledLabel
from al_pipeline.store.rounds import QueuedItem


@dataclass
class Pulled:
    """What one pull brought back.

    Attributes:
        labels: One label per labelled item (the latest valid answer).
        skipped: Items the labeller declined (they return to the pool, flagged).
        unresolved: Items whose annotators disagree with no majority (left unlabelled).
        retracted: Items whose label was withdrawn at the source (annotation deleted).
        written: How many of ``labels`` were new when recorded (set by the recorder).
    """

    labels: list[PulledLabel] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    unresolved: list[int] = field(default_factory=list)
    retracted: list[int] = field(default_factory=list)
    written: int = 0


class Labeller(Protocol):
    """Two verbs: push a batch of queued items, pull the labels that came back.

    Attributes:
        name: Recorded with each round; a round is finished by the labeller that opened it.
        answers_at_once: Every pushed item it can label is labelled by the time ``push``
            returns (the oracle), so there is nothing to wait for.
        unlabelled_hint: Appended to "items not labelled yet" (empty when none helps).
    """

    name: str
    answers_at_once: bool
    unlabelled_hint: str

    def push(self, round_id: int, batch: Sequence[QueuedItem]) -> dict[int, str]:
        """Hand items to labellers; return an external id per item id (may be empty)."""
        ...

    def pull(self, round_id: int, batch: Sequence[QueuedItem]) -> Pulled:
        """Fetch the labels given so far for a round's items."""
        ...

    def link(self) -> str | None:
        """Where people label (a URL), for labellers that have such a place."""
        ...

    def cannot_label(self, item_ids: NDArray[np.int64]) -> str | None:
        """Why a round that may pick any of ``item_ids`` would wait forever (some of them
        this labeller can never label), or None when it can label them all."""
        ...
