"""Creating and opening workspaces."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from al_pipeline.config import CONFIG_FILE, Config, new_config, parse_classes, render_toml
from al_pipeline.errors import BusyError, ConfigError
from al_pipeline.store.db import now
from al_pipeline.store.state import State, open_state

_GITIGNORE = (
    "# al-pipeline state and caches: not for version control\nstate.sqlite3*\ncache/\n.al.lock\n"
)


@dataclass(frozen=True)
class InitResult:
    """What ``al init`` created."""

    config: Config
    schema_version: int


def init_workspace(folder: Path, classes: str, name: str | None = None) -> InitResult:
    """Create a workspace: config, pools/ and checkpoints/ folders and the state database.

    The config file is written last, atomically, so an interrupted init leaves no
    half-made workspace (re-running it finishes the job).
    """
    config = new_config(folder, parse_classes(classes), name)
    try:
        for path in (config.root, config.pools_dir, config.checkpoints_dir):
            path.mkdir(parents=True, exist_ok=True)
        with open_state(config.database) as state:
            version = state.version
        gitignore = config.root / ".gitignore"
        if not gitignore.exists():
            gitignore.write_text(_GITIGNORE, encoding="utf-8")
        temporary = config.root / f".{CONFIG_FILE}.tmp"
        temporary.write_text(render_toml(config), encoding="utf-8")
        os.replace(temporary, config.root / CONFIG_FILE)
    except OSError as exc:
        raise ConfigError(
            f"Cannot create the workspace in '{config.root}': {exc.strerror}. "
            "Check that the folder is writable."
        ) from exc
    return InitResult(config, version)


LOCK_FILE = ".al.lock"
# Commands that hold the workspace for as long as they run: others refuse at once rather
# than wait for them.
LONG_RUNNING = frozenset({"al serve", "al run"})


@contextmanager
def opened(
    config: Config, command: str | None = None, on_wait: Callable[[str], None] | None = None
) -> Iterator[State]:
    """The workspace's state database, open for the length of a command.

    A ``command`` that writes (its name, e.g. ``"al pool add"``) first takes the
    workspace's lock, so two writers never interleave: see :func:`workspace_lock`.
    """
    with workspace_lock(config, command, on_wait):
        state = open_state(config.database)
        try:
            yield state
        finally:
            state.close()


@contextmanager
def workspace_lock(
    config: Config, command: str | None, on_wait: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the workspace's writer lock (an OS file lock, released if the process dies).

    A second writer waits, saying once whom it waits for, up to ``config.lock_wait``
    seconds, then refuses; behind a long-running holder (``al serve``, ``al run``) it refuses
    at once. ``command=None`` takes no lock (reading commands).
    """
    if command is None:
        yield
        return
    path = config.root / LOCK_FILE
    try:
        handle = path.open("a+", encoding="utf-8")
    except OSError as exc:
        raise BusyError(f"Cannot open the workspace lock {path}: {exc.strerror}.") from exc
    with handle:
        _acquire(handle, config.lock_wait, on_wait)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\t{command}\t{now()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _acquire(handle: TextIO, wait: float, on_wait: Callable[[str], None] | None) -> None:
    deadline = time.monotonic() + wait
    told = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        holder = _holder(handle)
        if holder.split(" (")[0] in LONG_RUNNING or time.monotonic() >= deadline:
            raise BusyError(
                f"Another command is using this workspace: {holder}. Run this one when it "
                "has ended (or stop it); nothing was changed."
            )
        if not told and on_wait is not None:
            on_wait(f"Waiting for {holder} to finish (up to {wait:.0f} s; Ctrl+C gives up)…")
            told = True
        time.sleep(0.2)


def _holder(handle: TextIO) -> str:
    handle.seek(0)
    parts = handle.read().strip().split("\t")
    if len(parts) != 3:
        return "another al command"
    pid, command, since = parts
    return f"{command} (pid {pid}, since {since})"
