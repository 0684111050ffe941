"""Names the user gives that become paths, and output paths the user names.

A tag or pool name becomes a folder inside the workspace, so it must be a plain name: never
a path, never ``..``. An output path (a CSV, a plot, a report folder) may be anywhere the
user points, but is checked before any work starts, so a typo costs one clear line and not
a half-done command. Files are written through a temporary file and a rename, so a reader
never sees half a file.
"""

from __future__ import annotations

import csv
import io
import os
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO

from al_pipeline.errors import ConfigError, OutputError, explain

MAX_NAME = 64
_NAME_PUNCTUATION = frozenset("._-")


def is_plain_name(value: str) -> bool:
    """Letters (any script), digits, '.', '_' and '-'; starts with a letter or digit."""
    return (
        0 < len(value) <= MAX_NAME
        and value[0].isalnum()
        and ".." not in value
        and all(c.isalnum() or c in _NAME_PUNCTUATION for c in value)
    )


def plain_name(value: str, what: str) -> str:
    """``value`` when it is a plain name, else an error naming ``what`` (e.g. ``--tag``)."""
    if not is_plain_name(value):
        raise OutputError(
            f"{what} {value!r} is not a plain name. It names a folder inside the workspace: "
            f"use letters, digits, '.', '_' and '-' (at most {MAX_NAME}), starting with a "
            "letter or digit, with no '/' or '..'."
        )
    return value


def name_from(text: str) -> str:
    """A plain name made from a folder name (other characters become '_')."""
    cleaned = "".join(
        c if c.isalnum() or c in _NAME_PUNCTUATION else "_"
        for c in unicodedata.normalize("NFC", text)
    ).strip("._-")
    while ".." in cleaned:
        cleaned = cleaned.replace("..", ".")
    return cleaned[:MAX_NAME] or "pool"


def at_least(value: float, low: float, what: str) -> None:
    """Refuse a number below ``low`` (``--epochs 0``, a negative ``--seed``), or NaN."""
    if not value >= low:
        raise ConfigError(f"{what} must be at least {low:g}, got {value:g}.")


def share(value: float, what: str) -> None:
    """Refuse a share outside 0 to 1 (``--until-accuracy 95`` meant 0.95)."""
    if not 0 <= value <= 1:
        raise ConfigError(f"{what} is a share from 0 to 1, got {value:g}; 95 % is 0.95.")


def port_number(value: int, what: str = "--port") -> int:
    """A TCP port a server can listen on."""
    if not 1 <= value <= 65535:
        raise ConfigError(f"{what} must be a port number from 1 to 65535, got {value}.")
    return value


def server_url(value: str, what: str = "--url") -> str:
    """An http(s) address of a server, without a trailing slash. A malformed one would
    otherwise surface later as a network error that sends the user looking for the server,
    or as a traceback from the HTTP client."""
    from urllib.parse import urlsplit

    fix = "Give the server's address as http://HOST:PORT, such as http://127.0.0.1:8080."
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - parsing it raises on a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"{what} {value!r} is not a valid address ({exc}). {fix}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what} {value!r} is not an http:// or https:// address. {fix}")
    return value.strip().rstrip("/")


def output_file(path: Path, what: str) -> Path:
    """Check that a file can be written at ``path`` (before any work is done)."""
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name.")
    if path.exists() and not path.is_file():
        # Written through a temporary file and a rename, /dev/stdout or a FIFO would be
        # replaced by a plain file (as root, even /dev/full was).
        raise OutputError(
            f"{what} {path} is not a regular file (a device, pipe or socket). Name a "
            "regular file to write."
        )
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"{what} {path}: the folder {parent} does not exist. Create it first.")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise OutputError(f"{what} {path} is not writable. Choose another place.")
    return path


def output_folder(path: Path, what: str) -> Path:
    """Check that ``path`` is (or can be created as) a writable folder."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder. Choose a folder.")
    existing = path if path.exists() else _nearest_existing(path)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{what} {path} is not writable. Choose another place.")
    return path


def _nearest_existing(path: Path) -> Path:
    for parent in path.absolute().parents:
        if parent.exists():
            return parent
    return Path("/")


def write_atomically(path: Path, write: Callable[[IO[bytes]], object], what: str = "file") -> Path:
    """Write ``path`` through a temporary file beside it and a rename (all or nothing). A
    symbolic link at ``path`` is replaced, never followed: a link planted inside the
    workspace must not redirect a write outside it."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        full = explain(exc)
        if full is not None:
            raise full from exc
        raise OutputError(f"Cannot write {what} {path}: {exc.strerror}.") from exc
    return path


def write_csv(
    path: Path, header: Sequence[str], rows: Iterable[Sequence[object]], what: str
) -> Path:
    """A UTF-8 CSV file, written atomically."""

    def write(handle: IO[bytes]) -> None:
        text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
        writer = csv.writer(text)
        writer.writerow(header)
        writer.writerows(rows)
        text.flush()
        text.detach()

    return write_atomically(path, write, what)
