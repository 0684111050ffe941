"""How long-running library work reports progress without printing.

Library functions take a :class:`Progress` callback; the CLI passes one that draws rich
progress bars, tests pass nothing (or one that interrupts the work on purpose).
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Called as work advances: ``phase`` names the step, ``total`` is None when unknown."""

    def __call__(self, phase: str, done: int, total: int | None) -> None: ...


def silent(phase: str, done: int, total: int | None) -> None:
    """A progress callback that ignores everything."""
