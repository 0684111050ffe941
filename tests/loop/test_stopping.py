"""Stopping rules: the options that name them are checked before any round runs."""

from __future__ import annotations

import pytest

from al_pipeline.errors import ConfigError
from al_pipeline.loop.stopping import PredictionsSettle, TargetAccuracy, stopping_rules


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"until_accuracy": 95.0}, r"--until-accuracy is a share from 0 to 1, got 95; 95 % is"),
        ({"until_accuracy": -0.1}, r"--until-accuracy is a share from 0 to 1"),
        ({"min_change": 2.0}, r"--min-change is a share from 0 to 1, got 2"),
        ({"budget": -1}, r"--budget must be at least 0"),
    ],
)
def test_a_rule_out_of_range_is_refused(options: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        stopping_rules(**options)  # type: ignore[arg-type]


def test_each_option_names_its_rule() -> None:
    rules = stopping_rules(until_accuracy=0.95, min_change=0.01)
    kinds: list[type] = [type(rule) for rule in rules]
    assert kinds == [TargetAccuracy, PredictionsSettle]
