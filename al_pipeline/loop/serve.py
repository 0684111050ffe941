"""[round] Webhook receiver: finish the round and start the next when a batch is labelled.

``al serve`` registers a webhook on the workspace's Label Studio project for annotation
events, carrying a random secret header. Requests go to a small HTTP server on 127.0.0.1
that checks the secret and the project and only queues the event; one worker drains the
queue, so a burst of annotations costs one pull, and training happens once per batch, one
at a time, while later events wait.
"""

from __future__ import annotations

import hmac
import json
import queue
import secrets
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from al_pipeline.config import Config
from al_pipeline.errors import PipelineError
from al_pipeline.labelling.labelstudio.client import LabelStudioClient
from al_pipeline.labelling.labelstudio.connection import connection
from al_pipeline.labelling.labelstudio.labeller import LabelStudioLabeller
from al_pipeline.loop.rounds import finish, start
from al_pipeline.loop.status import is_complete, pull
from al_pipeline.model.network import TrainingSettings
from al_pipeline.paths import at_least, port_number
from al_pipeline.progress import Progress, silent
from al_pipeline.store.state import open_state
from al_pipeline.store.workspace import workspace_lock

SECRET_HEADER = "X-AL-Secret"
PATH = "/webhook"
MAX_BODY = 1 << 20
EVENT_BACKLOG = 1024


class ServeError(PipelineError):
    """The webhook receiver cannot start."""


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

    strategy: str = "margin"
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
    events: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=EVENT_BACKLOG)
    secret = secrets.token_hex(16)
    with open_state(config.database) as state:
        labeller = LabelStudioLabeller(config, state, connection(config))
        project = labeller.project()
        server = _server(port, secret, project, events)
        url = f"http://127.0.0.1:{server.server_address[1]}{PATH}"
        try:
            hook, replaced = labeller.gateway.register_webhook(
                project, url, {SECRET_HEADER: secret}
            )
        except PipelineError:
            server.server_close()
            raise
        link = labeller.link()
    if replaced:
        report(f"Replaced {replaced} stale webhook(s) to {url} left by an earlier 'al serve'.")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    report(f"Listening on {url} for project {project} ({link})")
    try:
        return _work(config, plan, events, stop, report, progress)
    finally:
        server.shutdown()
        server.server_close()
        _unregister(labeller.gateway, hook, report)


def _unregister(gateway: LabelStudioClient, hook: int, report: Callable[[str], None]) -> None:
    """Remove the webhook so Label Studio stops calling a receiver that is gone."""
    try:
        gateway.remove_webhook(hook)
    except PipelineError as exc:
        report(f"Could not remove webhook {hook} from Label Studio ({exc}); delete it there.")


def _server(
    port: int, secret: str, project: int, events: queue.Queue[dict[str, Any]]
) -> ThreadingHTTPServer:
    class Receiver(BaseHTTPRequestHandler):
        timeout = 10  # a client that stops sending mid-request does not hold a thread

        def do_POST(self) -> None:
            given = self.headers.get(SECRET_HEADER, "")
            if self.path != PATH or not hmac.compare_digest(given, secret):
                return self._answer(403)
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                return self._answer(400)
            if not 0 <= length <= MAX_BODY:
                return self._answer(413 if length > MAX_BODY else 400)
            try:
                payload = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                payload = None
            if not isinstance(payload, dict):
                return self._answer(400)
            if _project_of(payload) not in (None, project):
                return self._answer(403)
            # The worker only needs to know that something happened: when the backlog is
            # full, an event is already waiting, so nothing is lost by not queueing this one.
            with suppress(queue.Full):
                events.put_nowait(payload)
            return self._answer(200)

        def _answer(self, code: int) -> None:
            self.send_response(code)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    class Server(ThreadingHTTPServer):
        request_queue_size = 256  # a burst of webhooks waits in the backlog, none is refused
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            """A client that hung up mid-answer is its own problem: no traceback."""

    try:
        return Server(("127.0.0.1", port), Receiver)
    except OSError as exc:
        raise ServeError(
            f"Cannot listen on 127.0.0.1:{port} ({exc.strerror}). Choose a free port with --port."
        ) from None


def _project_of(payload: dict[str, Any]) -> int | None:
    project = payload.get("project")
    if isinstance(project, dict):
        project = project.get("id")
    return project if isinstance(project, int) else None


def _work(
    config: Config,
    plan: ServePlan,
    events: queue.Queue[dict[str, Any]],
    stop: threading.Event,
    report: Callable[[str], None],
    progress: Progress,
) -> int:
    finished = 0
    _start_round(config, plan.strategy, plan.size, plan.balance, report, progress)
    events.put({})  # labels given while nothing listened count too: check once now
    while not stop.is_set():
        try:
            events.get(timeout=0.5)
        except queue.Empty:
            continue
        while not events.empty():
            events.get_nowait()
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
    """Start a round unless one is open or the pool is empty."""
    with open_state(config.database) as state:
        if state.open_round() is not None:
            return
        if not state.selectable_items():
            report("The pool has no unlabelled items left: no round to start.")
            return
        labeller = LabelStudioLabeller(config, state, connection(config))
        started = start(
            config,
            state,
            labeller,
            strategy=strategy,
            size=size,
            balance=balance,
            progress=progress,
        )
        where = f" at {started.link}" if started.link else ""
        report(f"Started round {started.round_id}: {len(started.queued)} items to label{where}")


def _on_batch(
    config: Config, plan: ServePlan, report: Callable[[str], None], progress: Progress
) -> bool:
    """Pull; when the open round is done, finish it and start the next. True if finished."""
    with open_state(config.database) as state:
        open_round = state.open_round()
        if open_round is None:
            return False
        labeller = LabelStudioLabeller(config, state, connection(config))
        pulled = pull(state, labeller, open_round.id)
        if not is_complete(state, open_round.id, plan.min_labelled):
            return False
        done = finish(
            config,
            state,
            labeller,
            plan.settings or TrainingSettings(seed=config.seed),
            min_labelled=plan.min_labelled,
            pulled=pulled,
            progress=progress,
        )
        accuracy = done.history.get("accuracy")
        shown = "no model yet" if accuracy is None else f"accuracy {accuracy:.4f}"
        report(f"Finished round {done.round_id}: {done.history['labelled']} labels, {shown}")
    balance = bool(open_round.params.get("balance"))
    _start_round(config, open_round.strategy, open_round.size, balance, report, progress)
    return True
