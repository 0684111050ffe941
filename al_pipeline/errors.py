"""Exceptions raised by the pipeline.

Library code raises these; only ``cli.py`` turns them into a message and exit code 1.
Each message says what was received and what to do next.
"""

from __future__ import annotations


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
