"""The workspace's Label Studio server: start and stop an embedded one, or connect to one.

The embedded server keeps everything in the workspace's ``studio/`` folder: its data
(SQLite), ``connection.json`` (URL, admin login and API key, mode 0600), ``server.pid`` and
``server.log``. It listens on 127.0.0.1 only, with signup, analytics, the version check and
error reporting off. It serves pool images from a document root that covers the workspace
and every pool, so tasks can point at the files where they are.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from al_pipeline.config import Config, server_environment
from al_pipeline.labelling.labelstudio.connection import (
    Connection,
    StudioError,
    connection,
    save_connection,
    stored_connection,
)
from al_pipeline.paths import port_number, server_url
from al_pipeline.progress import Progress, silent
from al_pipeline.store.state import State

PID_FILE = "server.pid"
LOG_FILE = "server.log"
DATA_DIR = "data"
DEFAULT_PORT = 8080
ADMIN = "admin@al-pipeline.local"
# Label Studio's default SSRF block list (core/utils/io.py) without 127.0.0.0/8 and ::1.
BANNED_SUBNETS = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "233.252.0.0/24",
    "240.0.0.0/4",
    "255.255.255.255/32",
    "::/128",
    "64:ff9b::/96",
    "64:ff9b:1::/48",
    "100::/64",
    "2001:0000::/32",
    "2001:20::/28",
    "2001:db8::/32",
    "2002::/16",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
)
_LISTENING = re.compile(r"Starting development server at https?://[^:/]+:(\d+)/")


@dataclass
class ServerStatus:
    """What ``al studio status`` reports."""

    url: str
    embedded: bool
    healthy: bool
    pid: int | None = None
    version: str | None = None
    log: Path | None = None
    document_root: str | None = None


def connect(
    config: Config, url: str, api_key: str, document_root: Path | None = None
) -> ServerStatus:
    """Check that ``url`` answers and accepts ``api_key``, then store the connection."""
    if not api_key.strip():
        raise StudioError(
            "--api-key is empty. Copy the key from Label Studio (Account & Settings, "
            "Access Token) and pass it."
        )
    value = Connection(
        server_url(url),
        api_key.strip(),
        embedded=False,
        document_root=str(document_root.resolve()) if document_root else None,
    )
    version = value.gateway().version()
    save_connection(config, value)
    return ServerStatus(value.url, False, True, version=version, document_root=value.document_root)


def document_root(config: Config, state: State) -> Path:
    """The folder the server may serve files from: the nearest one holding the workspace
    and every pool. A storage folder must lie strictly inside it, so when a pool *is* that
    folder its parent is used."""
    roots = [config.root.resolve()]
    roots += [(config.root / pool.root).resolve() for pool in state.pools()]
    common = Path(os.path.commonpath([str(r) for r in roots]))
    return common.parent if common in roots[1:] and common != common.parent else common


def up(
    config: Config,
    state: State,
    port: int = DEFAULT_PORT,
    timeout: float = 180.0,
    progress: Progress = silent,
    root: Path | None = None,
) -> ServerStatus:
    """Start the workspace's embedded server (or report the one already running).

    The first start creates the admin user and API token (stored, never printed) and
    takes about 30 s for database migrations; later starts take a few seconds. ``root``
    overrides the document root (default: see :func:`document_root`).
    """
    port_number(port)
    stored = stored_connection(config)
    running = _running_pid(config)
    if running is not None and stored is not None:
        return _status_of(stored, running, config)
    _require_free(port)
    root = (root or document_root(config, state)).resolve()
    value = _embedded_connection(stored, port, root)
    save_connection(config, value)
    log = config.studio_dir / LOG_FILE
    since = log.stat().st_size if log.is_file() else 0
    process = _launch(config, value, port, root)
    _wait_until_healthy(config, value, process, timeout, progress, since)
    _check_port(config, port, since)
    return _status_of(value, process.pid, config)


def _embedded_connection(stored: Connection | None, port: int, root: Path) -> Connection:
    url = f"http://127.0.0.1:{port}"
    if stored is not None and stored.embedded:
        return Connection(url, stored.api_key, True, str(root), stored.username, stored.password)
    return Connection(url, secrets.token_hex(20), True, str(root), ADMIN, secrets.token_urlsafe(18))


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _require_free(port: int, wait: float = 10.0) -> None:
    """Refuse a port something listens on, after giving a server that is shutting down
    ``wait`` seconds to let go. (A race with another program is caught by
    :func:`_check_port`.)"""
    deadline = time.monotonic() + wait
    while _listening(port):
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    else:
        return
    raise StudioError(
        f"Port {port} on 127.0.0.1 is taken (Label Studio would silently move to "
        "another). Choose a free one with --port, or stop the program using it."
    )


def _launch(config: Config, value: Connection, port: int, root: Path) -> subprocess.Popen[bytes]:
    data = config.studio_dir / DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    settings = {
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_USERNAME": value.username or ADMIN,
        "LABEL_STUDIO_PASSWORD": value.password or "",
        "LABEL_STUDIO_USER_TOKEN": value.api_key,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(root),
        "LABEL_STUDIO_LATEST_VERSION_CHECK": "false",
        "LABEL_STUDIO_COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_SENTRY_DSN": "",
        "LABEL_STUDIO_FRONTEND_SENTRY_DSN": "",
        # Webhooks to 'al serve' on 127.0.0.1: every default SSRF block but loopback.
        "LABEL_STUDIO_USE_DEFAULT_BANNED_SUBNETS": "false",
        "LABEL_STUDIO_USER_ADDITIONAL_BANNED_SUBNETS": ",".join(BANNED_SUBNETS),
    }
    command = [
        sys.executable,
        "-m",
        "label_studio.server",
        "start",
        "--no-browser",
        "--internal-host",
        "127.0.0.1",
        "--port",
        str(port),
        "--enable-legacy-api-token",
    ]
    log = (config.studio_dir / LOG_FILE).open("ab")
    with log:
        process = subprocess.Popen(
            command,
            cwd=config.studio_dir,
            env=server_environment(settings),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (config.studio_dir / PID_FILE).write_text(str(process.pid), encoding="utf-8")
    return process


def _wait_until_healthy(
    config: Config,
    value: Connection,
    process: subprocess.Popen[bytes],
    timeout: float,
    progress: Progress,
    since: int,
) -> None:
    """Until the server answers on its port; it fails fast when the server exits or
    says it moved to another port (waiting for health there would wait for ever)."""
    deadline = time.monotonic() + timeout
    progress("Starting Label Studio (about 30 s the first time)", 0, None)
    from al_pipeline.labelling.labelstudio.client import health

    port = int(value.url.rsplit(":", 1)[1])
    while not health(value.url):
        _check_port(config, port, since)
        if process.poll() is not None:
            (config.studio_dir / PID_FILE).unlink(missing_ok=True)
            raise StudioError(
                f"Label Studio exited during start-up (code {process.returncode}). Last lines "
                f"of {config.studio_dir / LOG_FILE}:\n{_tail(config)}"
            )
        if time.monotonic() > deadline:
            _stop(config, process.pid)
            raise StudioError(
                f"Label Studio did not answer within {timeout:.0f} s and was stopped. See "
                f"{config.studio_dir / LOG_FILE}, then run 'al studio up' again."
            )
        time.sleep(0.5)
    progress("Starting Label Studio (about 30 s the first time)", 1, 1)


def _check_port(config: Config, port: int, since: int) -> None:
    """Label Studio moves to the next free port when its port is taken; catch that race in
    what it logged since byte ``since`` (this start's lines only)."""
    found = _LISTENING.findall(_log_since(config, since))
    if found and int(found[-1]) != port:
        pid = _running_pid(config)
        if pid is not None:
            _stop(config, pid)
        raise StudioError(
            f"Port {port} was taken while Label Studio started, and it moved to port "
            f"{found[-1]}; it has been stopped. Run 'al studio up --port P' with a free port."
        )


def _log_since(config: Config, offset: int) -> str:
    try:
        with (config.studio_dir / LOG_FILE).open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _tail(config: Config, lines: int = 15) -> str:
    path = config.studio_dir / LOG_FILE
    if not path.is_file():
        return ""
    text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return "\n".join(text[-lines:])


@dataclass
class Stopped:
    """What ``al studio down`` did: the server's pid (None: it was not running), and
    whether it had to be killed after not stopping on SIGTERM."""

    pid: int | None
    killed: bool = False


def down(config: Config) -> Stopped:
    """Stop the embedded server and every process it started; return only once they are
    gone (SIGTERM, then SIGKILL after a grace period)."""
    pid = _running_pid(config)
    if pid is None:
        return Stopped(None)
    return Stopped(pid, killed=_stop(config, pid))


def _stop(config: Config, pid: int, grace: float = 15.0) -> bool:
    """Stop the process group led by ``pid``; True when SIGKILL was needed."""
    killed = False
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            break
        killed = sig == signal.SIGKILL
        deadline = time.monotonic() + wait
        while _group_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not _group_alive(pid):
            break
    if _group_alive(pid):
        raise StudioError(
            f"Label Studio (process group {pid}) did not stop, even after SIGKILL. Check it "
            f"with 'ps -g {pid}'."
        )
    (config.studio_dir / PID_FILE).unlink(missing_ok=True)
    return killed


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group is still alive (zombies do not count)."""
    _alive(pgid)  # reaps the leader when it is our own child
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _alive(pid: int) -> bool:
    try:
        finished, _ = os.waitpid(pid, os.WNOHANG)
        if finished == pid:
            return False
    except ChildProcessError:
        pass
    status = Path(f"/proc/{pid}/status")
    if status.is_file():
        return "\nState:\tZ" not in status.read_text(encoding="utf-8", errors="replace")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _running_pid(config: Config) -> int | None:
    """The pid in the pid file if that process is alive and is Label Studio."""
    path = config.studio_dir / PID_FILE
    try:
        pid = int(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    command = Path(f"/proc/{pid}/cmdline")
    is_studio = not command.exists() or b"label_studio" in command.read_bytes()
    if _alive(pid) and is_studio:
        return pid
    path.unlink(missing_ok=True)
    return None


def server_status(config: Config) -> ServerStatus:
    """URL, pid, health and version of the workspace's server."""
    value = connection(config)
    pid = _running_pid(config) if value.embedded else None
    return _status_of(value, pid, config)


def _status_of(value: Connection, pid: int | None, config: Config) -> ServerStatus:
    from al_pipeline.labelling.labelstudio.client import health

    healthy = health(value.url)
    version = value.gateway().version() if healthy else None
    log = config.studio_dir / LOG_FILE if value.embedded else None
    return ServerStatus(value.url, value.embedded, healthy, pid, version, log, value.document_root)


def credentials(config: Config) -> dict[str, Any]:
    """The stored login and API key (for ``al studio credentials`` only)."""
    value = connection(config)
    return {
        "url": value.url,
        "username": value.username,
        "password": value.password,
        "api_key": value.api_key,
    }
