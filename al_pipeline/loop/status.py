"""[round] Where the open round stands: pull its labels, count them, wait for them.

Kept apart from :mod:`al_pipeline.loop.rounds` so that ``al round status`` answers at once:
nothing here loads the model stack.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from al_pipeline.errors import PipelineError
from al_pipeline.labelling.base import Labeller, Pulled
from al_pipeline.progress import Progress, silent
from al_pipeline.store.rounds import RoundRow
from al_pipeline.store.state import State


class RoundError(PipelineError):
    """A round cannot be started or finished as asked."""


@dataclass
class RoundStatus:
    """Where the open round stands."""

    round_id: int
    strategy: str
    size: int
    labeller: str
    labelled: int
    pending: int
    skipped: int
    opened_at: str
    unresolved: list[int] = field(default_factory=list)
    link: str | None = None


def status(state: State, labeller: Labeller | None = None) -> RoundStatus:
    """The open round's progress, or an error saying there is none.

    With a labeller, the labels given so far are pulled (and written) first, so the counts
    are the labeller's.
    """
    open_round = require_open(state)
    pulled = pull(state, labeller, open_round.id) if labeller else Pulled()
    queue = state.queue(open_round.id)
    return RoundStatus(
        open_round.id,
        open_round.strategy,
        open_round.size,
        open_round.labeller,
        labelled=sum(q.state == "labelled" for q in queue),
        pending=sum(q.state == "pending" for q in queue),
        skipped=sum(q.state == "skipped" for q in queue),
        opened_at=open_round.opened_at,
        unresolved=pulled.unresolved,
        link=labeller.link() if labeller else None,
    )


def pull(state: State, labeller: Labeller, round_id: int) -> Pulled:
    """Pull and write at once: nothing pulled is lost if a later step fails."""
    pulled = labeller.pull(round_id, state.queue(round_id))
    pulled.written = state.record_pulled(
        round_id, pulled.labels, pulled.skipped, pulled.retracted, pulled.unresolved
    )
    return pulled


def is_complete(state: State, round_id: int, min_labelled: int | None = None) -> bool:
    """Every queued item labelled or skipped (or at least ``min_labelled`` labelled)."""
    queue = state.queue(round_id)
    labelled = sum(q.state == "labelled" for q in queue)
    if min_labelled is not None:
        return labelled >= min(min_labelled, len(queue))
    return all(q.state in ("labelled", "skipped") for q in queue)


def wait_for_labels(
    state: State,
    labeller: Labeller,
    round_id: int,
    *,
    min_labelled: int | None = None,
    poll_seconds: float = 10.0,
    timeout: float | None = None,
    progress: Progress = silent,
    sleep: Callable[[float], None] = time.sleep,
) -> Pulled:
    """Pull every ``poll_seconds`` (writing each label at once) until the round is done;
    the last pull."""
    deadline = None if timeout is None else time.monotonic() + timeout
    size = len(state.queue(round_id))
    while True:
        pulled = pull(state, labeller, round_id)
        labelled = sum(q.state != "pending" for q in state.queue(round_id))
        progress(f"Round {round_id}: waiting for labels", labelled, size)
        if is_complete(state, round_id, min_labelled):
            return pulled
        if deadline is not None and time.monotonic() > deadline:
            raise RoundError(
                f"Round {round_id}: {labelled} of {size} items labelled after waiting "
                f"{timeout:.0f} s. Run the same command again to keep waiting."
            )
        sleep(poll_seconds)


def require_open(state: State) -> RoundRow:
    open_round = state.open_round()
    if open_round is None:
        raise RoundError("No round is open. Start one with 'al round start'.")
    return open_round
