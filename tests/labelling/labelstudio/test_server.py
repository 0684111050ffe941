"""Stopping the embedded server's process group, with real processes and signals; and
connecting to a server that is not Label Studio."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import HTTPServer, SimpleHTTPRequestHandler

import pytest

from al_pipeline.config import Config
from al_pipeline.labelling.labelstudio.client import LabelStudioError
from al_pipeline.labelling.labelstudio.connection import stored_connection
from al_pipeline.labelling.labelstudio.server import _group_alive, _stop, connect

# A leader that dies on SIGTERM, with a child in its group that ignores it (as a server's
# worker stuck in a request would).
GROUP = """
import signal, subprocess, sys, time
child = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(600)"
)
worker = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
print(worker.stdout.readline().strip(), flush=True)
time.sleep(600)
"""


def test_stop_waits_for_the_whole_group_and_kills_what_ignores_sigterm(
    workspace: Config,
) -> None:
    leader = subprocess.Popen(
        [sys.executable, "-c", GROUP], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert leader.stdout is not None and leader.stdout.readline().strip() == "ready"
    workspace.studio_dir.mkdir(parents=True, exist_ok=True)
    (workspace.studio_dir / "server.pid").write_text(str(leader.pid))
    began = time.monotonic()
    assert _stop(workspace, leader.pid, grace=1.0) is True
    assert not _group_alive(leader.pid)
    assert time.monotonic() - began < 20
    assert not (workspace.studio_dir / "server.pid").exists()


@pytest.fixture
def web_server() -> Iterator[str]:
    """A plain web server on 127.0.0.1, answering every API path with a 404 page."""
    server = HTTPServer(("127.0.0.1", 0), SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_another_web_server_at_the_address_is_named_in_one_line(
    workspace: Config, web_server: str
) -> None:
    """Its HTML error page was once printed whole, as the error's detail."""
    with pytest.raises(LabelStudioError) as error:
        connect(workspace, web_server + "/", "0" * 40)
    message = str(error.value)
    assert "answered 404" in message and "not Label Studio's API" in message
    assert "<" not in message and "\n" not in message
    assert stored_connection(workspace) is None
