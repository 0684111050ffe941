"""[loop] ``al serve``: the round driver fed by Label Studio's webhook events.

The receiver (:mod:`al_pipeline.labelling.labelstudio.webhooks`) only authenticates and
queues events. Here one worker waits for them and asks the driver
(:mod:`al_pipeline.loop.rounds`) to finish the open round once its batch is labelled and
to start the next, so training happens once per batch, one at a time, while later events
wait.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from al_pipeline.config import Config
from al_pipeline.labelling.labelstudio.connection import connection
from al_pipeline.labelling.labelstudio.labeller import LabelStudioLabeller
from al_pipeline.labelling.labelstudio.webhooks import Webhooks
from al_pipeline.loop.rounds import finish_if_labelled, start_unless_open
from al_pipeline.model.network import TrainingSettings
from al_pipeline.paths import at_least, port_number
from al_pipeline.progress import Progress, silent
from al_pipeline.store.state import open_state
from al_pipeline.store.workspace import workspace_lock


@dataclass
class ServePlan:
    """How ``al serve`` drives rounds.

    Attributes:
        strategy: For a first round when none is open (later rounds reuse the last one's).
        size: Batch size of that first round.
        balance: Class-balanced batches.
        min_labelled: Finish a round once this many items are labelled (default: all).
        settings: Training settings for each finish.
        max_rounds: Stop after finishing this many rounds (None: until interrupted).
    """

    strategy: str = "auto"
    size: int = 20
    balance: bool = False
    min_labelled: int | None = None
    settings: TrainingSettings | None = None
    max_rounds: int | None = None


def serve(
    config: Config,
    plan: ServePlan,
    port: int,
    report: Callable[[str], None],
    stop: threading.Event | None = None,
    progress: Progress = silent,
) -> int:
    """Receive webhooks until ``stop`` is set (or ``plan.max_rounds`` rounds are finished).

    Returns how many rounds were finished.
    """
    port_number(port)
    if plan.min_labelled is not None:
        at_least(plan.min_labelled, 1, "--min-labelled")
    stop = stop or threading.Event()
    with workspace_lock(config, "al serve", report), stopped_by_signals(stop):
        return _serve(config, plan, port, report, stop, progress)


@contextmanager
def stopped_by_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM (kill, systemd, docker) acts as SIGINT (Ctrl+C): ``stop`` is set and
    KeyboardInterrupt raised, so a training in progress is abandoned (its transaction rolls
    back; the next start redoes it) and the receiver removes its webhook on the way out.
    SIGINT is set explicitly because a program started in the background by a script
    inherits it ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        stop.set()
        raise KeyboardInterrupt

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve(
    config: Config,
    plan: ServePlan,
    port: int,
    report: Callable[[str], None],
    stop: threading.Event,
    progress: Progress,
) -> int:
    with open_state(config.database) as state:
        labeller = LabelStudioLabeller(config, state, connection(config))
        project, link = labeller.project(), labeller.link()
    with Webhooks(labeller.gateway, project, port, report) as hooks:
        if hooks.replaced:
            report(
                f"Replaced {hooks.replaced} stale webhook(s) to {hooks.url} left by an earlier "
                "'al serve'."
            )
        report(f"Listening on {hooks.url} for project {project} ({link})")
        return _work(config, plan, hooks, stop, report, progress)


def _work(
    config: Config,
    plan: ServePlan,
    hooks: Webhooks,
    stop: threading.Event,
    report: Callable[[str], None],
    progress: Progress,
) -> int:
    finished = 0
    _start_round(config, plan.strategy, plan.size, plan.balance, report, progress)
    hooks.events.put({})  # labels given while nothing listened count too: check once now
    while hooks.wait(stop):
        if _on_batch(config, plan, report, progress):
            finished += 1
            if plan.max_rounds is not None and finished >= plan.max_rounds:
                break
    return finished


def _start_round(
    config: Config,
    strategy: str,
    size: int,
    balance: bool,
    report: Callable[[str], None],
    progress: Progress,
) -> None:
    with open_state(config.database) as state:
        labeller = LabelStudioLabeller(config, state, connection(config))
        started = start_unless_open(
            config,
            state,
            labeller,
            strategy=strategy,
            size=size,
            balance=balance,
            progress=progress,
        )
        if started is None and state.open_round() is None:
            report("The pool has no unlabelled items left: no round to start.")
    if started is not None:
        where = f" at {started.link}" if started.link else ""
        report(f"Started round {started.round_id}: {len(started.queued)} items to label{where}")


def _on_batch(
    config: Config, plan: ServePlan, report: Callable[[str], None], progress: Progress
) -> bool:
    """When the open round's batch is labelled, finish it and start the next (the same
    strategy and size). True if a round was finished."""
    with open_state(config.database) as state:
        labeller = LabelStudioLabeller(config, state, connection(config))
        settings = plan.settings or TrainingSettings.for_workspace(config)
        done = finish_if_labelled(
            config, state, labeller, settings, min_labelled=plan.min_labelled, progress=progress
        )
        if done is None:
            return False
        accuracy = done.history.accuracy
        shown = "no model yet" if accuracy is None else f"accuracy {accuracy:.4f}"
        report(f"Finished round {done.round_id}: {done.history.labelled} labels, {shown}")
        closed = state.round(done.round_id)
    assert closed is not None
    balance = closed.params.balance
    _start_round(config, closed.strategy, closed.size, balance, report, progress)
    return True
