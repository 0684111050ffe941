"""The oracle: answers from labels the workspace already knows but keeps hidden.

Items added with ``al pool add DIR --labelled --oracle`` carry a hidden label. The oracle
reveals it when a round queries the item, exactly as a perfect human labeller would, so
rounds and simulations run unattended.
"""

from __future__ import annotations

from collections.abc import Sequence

from al_pipeline.labelling.base import Pulled
from al_pipeline.store.labels import PulledLabel
from al_pipeline.store.rounds import QueuedItem
from al_pipeline.store.state import State


class OracleLabeller:
    """Reveals hidden labels for queued items."""

    name = "oracle"
    answers_at_once = True
    unlabelled_hint = " The oracle answers only for items added with --labelled --oracle."

    def __init__(self, state: State) -> None:
        self.state = state

    def push(self, round_id: int, batch: Sequence[QueuedItem]) -> dict[int, str]:
        return {item.item_id: f"oracle:{item.item_id}" for item in batch}

    def pull(self, round_id: int, batch: Sequence[QueuedItem]) -> Pulled:
        known = self.state.oracle_labels([item.item_id for item in batch])
        return Pulled(
            labels=[PulledLabel(i, label, "oracle", "oracle") for i, label in known.items()]
        )

    def link(self) -> str | None:
        return None
