"""[labelling] Label Studio's webhooks, received: an HTTP server on 127.0.0.1 that
authenticates each call and queues it. It never decides what an event means; the loop does.

The webhook is registered on one project for annotation events, with a random secret
header. A request without the secret, for another project, too large or not JSON is
refused; a valid one is only queued (a full backlog already holds an event, so nothing is
lost by not queueing another). The worker that drains the queue waits for one event and
swallows the rest, so a burst of annotations costs one pull.
"""

from __future__ import annotations

import hmac
import json
import queue
import secrets
import threading
from collections.abc import Callable
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from al_pipeline.errors import PipelineError
from al_pipeline.labelling.labelstudio.client import LabelStudioClient

SECRET_HEADER = "X-AL-Secret"
PATH = "/webhook"
MAX_BODY = 1 << 20
EVENT_BACKLOG = 1024


class ServeError(PipelineError):
    """The webhook receiver cannot start."""


class Webhooks:
    """The receiver for one project: ``with Webhooks(...) as hooks`` listens, registers the
    webhook, and on the way out stops and removes it."""

    def __init__(
        self, client: LabelStudioClient, project: int, port: int, report: Callable[[str], None]
    ) -> None:
        self.events: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=EVENT_BACKLOG)
        self._client, self._project, self._report = client, project, report
        self._secret = secrets.token_hex(16)
        self._server = _server(port, self._secret, project, self.events)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}{PATH}"
        self.replaced = 0
        self._hook: int | None = None

    def __enter__(self) -> Webhooks:
        try:
            self._hook, self.replaced = self._client.register_webhook(
                self._project, self.url, {SECRET_HEADER: self._secret}
            )
        except PipelineError:
            self._server.server_close()
            raise
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._hook is not None:
            self._unregister(self._hook)

    def wait(self, stop: threading.Event, poll: float = 0.5) -> bool:
        """Block until an event came (True; later ones queued meanwhile are dropped) or
        ``stop`` is set (False)."""
        while not stop.is_set():
            try:
                self.events.get(timeout=poll)
            except queue.Empty:
                continue
            while not self.events.empty():
                self.events.get_nowait()
            return True
        return False

    def _unregister(self, hook: int) -> None:
        """Remove the webhook so Label Studio stops calling a receiver that is gone."""
        try:
            self._client.remove_webhook(hook)
        except PipelineError as exc:
            self._report(
                f"Could not remove webhook {hook} from Label Studio ({exc}); delete it there."
            )


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
