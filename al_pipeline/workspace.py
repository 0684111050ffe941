"""Creating and opening workspaces."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from al_pipeline.config import CONFIG_FILE, Config, new_config, parse_classes, render_toml
from al_pipeline.errors import ConfigError
from al_pipeline.state import State, open_state

_GITIGNORE = "# al-pipeline state and caches: not for version control\nstate.sqlite3*\ncache/\n"


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


@contextmanager
def opened(config: Config) -> Iterator[State]:
    """The workspace's state database, open for the length of a command."""
    state = open_state(config.database)
    try:
        yield state
    finally:
        state.close()
