"""Exceptions raised by the pipeline.

Library code raises these; only ``cli.py`` turns them into a message and exit code 1.
Each message says what was received and what to do next.
"""

from __future__ import annotations

import errno
import sqlite3


class PipelineError(Exception):
    """A user-facing failure with a message that explains the fix."""


class ConfigError(PipelineError):
    """The workspace config (al.toml), an environment variable or a flag is invalid."""


class WorkspaceNotFoundError(PipelineError):
    """No workspace was found from the current folder upwards or at ``--workspace``."""


class WorkspaceExistsError(PipelineError):
    """``al init`` was pointed at a folder that already holds a workspace."""


class StateError(PipelineError):
    """The state database is unreadable, newer than this version, or inconsistent."""


class IngestError(PipelineError):
    """A pool folder or annotation set cannot be ingested as a whole."""


class UnknownClassError(PipelineError):
    """A class name that is not one of the workspace's classes."""


class NoLabelsError(PipelineError):
    """There is nothing (or too little) to train or evaluate on."""


class OutputError(PipelineError):
    """A name or output path given by the user cannot be used as asked."""


class DiskFullError(PipelineError):
    """The disk (or quota) holding the workspace or an output file is full."""


class BusyError(PipelineError):
    """Another command holds the workspace, or another program holds its database."""


_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def explain(exc: BaseException) -> PipelineError | None:
    """The one place where failures of the machine (not of the user) become plain messages:
    a full disk and a database locked by another program. ``None`` for anything else."""
    if isinstance(exc, PipelineError):
        return exc
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS:
        where = f" writing {exc.filename}" if exc.filename else ""
        return DiskFullError(
            f"Disk full{where}: {exc.strerror}. Nothing was recorded for the step that "
            "failed; free some space and run the same command again."
        )
    text = str(exc).lower()
    if isinstance(exc, sqlite3.OperationalError) and "disk is full" in text:
        return DiskFullError(
            "Disk full: the state database could not be written, and the transaction was "
            "rolled back. Free some space and run the same command again."
        )
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return BusyError(
            "The state database is locked by another program (another al command, or a "
            "sqlite3 shell with an open transaction). Close it, or wait, and run the same "
            "command again."
        )
    return None
