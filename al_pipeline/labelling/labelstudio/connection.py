"""[label] How a workspace reaches Label Studio: the stored or configured connection.

The server (``server.py``) writes it; the labeller and the client read it. It lives apart
from both so neither imports the other.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from al_pipeline.config import Config
from al_pipeline.errors import PipelineError

if TYPE_CHECKING:
    from al_pipeline.labelling.labelstudio.client import Gateway

CONNECTION_FILE = "connection.json"


class StudioError(PipelineError):
    """The Label Studio server cannot be started, stopped or reached as asked."""


@dataclass
class Connection:
    """How this workspace reaches Label Studio.

    Attributes:
        url: Base URL of the server.
        api_key: A legacy API token (sent as ``Authorization: Token ...``) or a personal
            access token.
        embedded: True for the server ``al studio up`` runs from the workspace.
        document_root: The server's ``LOCAL_FILES_DOCUMENT_ROOT`` (None: the server
            cannot serve local files; tasks then need images it can reach otherwise).
        username: Admin login of the embedded server.
        password: Its password.
    """

    url: str
    api_key: str
    embedded: bool = False
    document_root: str | None = None
    username: str | None = None
    password: str | None = None

    def gateway(self) -> Gateway:
        from al_pipeline.labelling.labelstudio.client import (
            Gateway,  # the SDK loads only when a server is used
        )

        return Gateway(self.url, self.api_key)


def connection(config: Config) -> Connection:
    """The connection to use: ``$LABEL_STUDIO_URL``/``$LABEL_STUDIO_API_KEY`` if set, else
    the one stored by ``al studio up`` or ``al studio connect``."""
    stored = stored_connection(config)
    if config.studio_url and config.studio_api_key:
        root = stored.document_root if stored and stored.url == config.studio_url else None
        return Connection(config.studio_url.rstrip("/"), config.studio_api_key, False, root)
    if stored is None:
        raise StudioError(
            "This workspace has no Label Studio server. Start one with 'al studio up', or "
            "use yours with 'al studio connect --url URL --api-key KEY'."
        )
    return stored


def has_connection(config: Config) -> bool:
    """Whether the workspace would talk to Label Studio (stored or from the environment)."""
    return (
        bool(config.studio_url and config.studio_api_key) or stored_connection(config) is not None
    )


def stored_connection(config: Config) -> Connection | None:
    path = config.studio_dir / CONNECTION_FILE
    if not path.is_file():
        return None
    try:
        return Connection(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise StudioError(
            f"{path} is not a valid connection file ({exc}). Delete it and run 'al studio "
            "up' or 'al studio connect' again."
        ) from exc


def _private_folder(config: Config) -> Path:
    """``studio/`` readable by the owner only: it holds the API key, in connection.json and
    in Label Studio's own database."""
    config.studio_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.studio_dir, 0o700)
    return config.studio_dir


def save_connection(config: Config, value: Connection) -> None:
    """Write the connection file atomically, readable by the owner only."""
    _private_folder(config)
    path = config.studio_dir / CONNECTION_FILE
    temporary = path.with_suffix(".tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        json.dump(asdict(value), handle, indent=2)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
