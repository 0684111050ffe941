"""The oracle: answers from labels the workspace already knows but keeps hidden.

Items added with ``al pool add DIR --labelled --oracle`` carry a hidden label. The oracle
reveals it when a round queries the item, exactly as a perfect human labeller would, so
rounds and simulations run unattended.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

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

    def cannot_label(self, item_ids: NDArray[np.int64]) -> str | None:
        """The oracle knows only hidden labels: a round must not pick an item without one.

        A workspace without a Label Studio server gets the oracle by default, so this is
        what a newcomer meets after 'al pool add DIR' of unlabelled photos and 'al run'.
        """
        missing = len(self.unknown(item_ids))
        if not missing:
            return None
        lacking = (
            f"None of the {missing} items a round could pick has a hidden label"
            if missing == len(item_ids)
            else f"{missing} of the {len(item_ids)} items a round could pick have no hidden label"
        )
        return (
            f"{lacking},"
            " and the oracle labeller only reveals labels added with 'al pool add DIR"
            " --labelled --oracle'. To label them in the browser, start Label Studio first"
            " ('al studio up', or 'al studio connect --url URL --api-key KEY'), then run again."
        )

    def unknown(self, item_ids: NDArray[np.int64]) -> NDArray[np.int64]:
        """Those of ``item_ids`` (selectable items) without a hidden label: the oracle
        cannot answer for them."""
        hidden = np.fromiter(self.state.hidden_items(), np.int64)
        return item_ids[~np.isin(item_ids, hidden)]
