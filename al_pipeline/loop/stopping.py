"""[loop] Stopping rules for ``al run``: objects the driver asks after every round.

A rule looks at the store and the history rows so far and gives a reason to stop, or
``None``. A rule may also cap the next batch (the label budget does), so the loop never asks
for labels it will not use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from al_pipeline.paths import at_least, share
from al_pipeline.records import HistoryRow
from al_pipeline.store.state import State


class StoppingRule(Protocol):
    def reason(self, state: State, rows: Sequence[HistoryRow]) -> str | None:
        """Why the loop should stop now, or None to go on."""
        ...

    def cap(self, state: State, size: int) -> int:
        """The next batch's size under this rule."""
        ...


class _Rule:
    def cap(self, state: State, size: int) -> int:
        return size


@dataclass(frozen=True)
class LabelBudget(_Rule):
    """Stop once the training labels reach ``labels``; the last batch is trimmed to fit."""

    labels: int

    def reason(self, state: State, rows: Sequence[HistoryRow]) -> str | None:
        labelled = sum(state.label_counts().values())
        if labelled >= self.labels:
            return f"label budget reached ({labelled} of {self.labels})"
        return None

    def cap(self, state: State, size: int) -> int:
        return min(size, self.labels - sum(state.label_counts().values()))


@dataclass(frozen=True)
class TargetAccuracy(_Rule):
    """Stop once the last round's test accuracy reaches ``accuracy``."""

    accuracy: float

    def reason(self, state: State, rows: Sequence[HistoryRow]) -> str | None:
        reached = rows[-1].accuracy if rows else None
        if reached is not None and reached >= self.accuracy:
            return f"target accuracy reached ({reached:.4f} >= {self.accuracy})"
        return None


@dataclass(frozen=True)
class PredictionsSettle(_Rule):
    """Stop once less than ``min_change`` of the pool changed predicted class in a round."""

    min_change: float

    def reason(self, state: State, rows: Sequence[HistoryRow]) -> str | None:
        change = rows[-1].pool_change if rows else None
        if change is not None and change < self.min_change:
            return f"predictions stopped changing ({change:.4f} of the pool < {self.min_change})"
        return None


@dataclass(frozen=True)
class PoolExhausted(_Rule):
    """Stop when nothing is left to select (always in force)."""

    def reason(self, state: State, rows: Sequence[HistoryRow]) -> str | None:
        return None if state.has_selectable() else "no unlabelled items left"


def stopping_rules(
    *,
    budget: int | None = None,
    until_accuracy: float | None = None,
    min_change: float | None = None,
) -> tuple[StoppingRule, ...]:
    """The rules the options name, checked, in the order they are asked. (The driver
    always adds :class:`PoolExhausted`.)"""
    rules: list[StoppingRule] = []
    if budget is not None:
        at_least(budget, 0, "--budget")
        rules.append(LabelBudget(budget))
    if until_accuracy is not None:
        share(until_accuracy, "--until-accuracy")
        rules.append(TargetAccuracy(until_accuracy))
    if min_change is not None:
        share(min_change, "--min-change")
        rules.append(PredictionsSettle(min_change))
    return tuple(rules)
