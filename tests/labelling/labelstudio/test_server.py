"""Stopping the embedded server's process group, with real processes and signals."""

from __future__ import annotations

import subprocess
import sys
import time

from al_pipeline.config import Config
from al_pipeline.labelling.labelstudio.server import _group_alive, _stop

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
