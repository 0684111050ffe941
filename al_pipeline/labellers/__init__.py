"""[label] Labellers: where queued items go to be labelled and where labels come from."""

from __future__ import annotations

from al_pipeline.config import Config
from al_pipeline.errors import ConfigError
from al_pipeline.labellers.base import Labeller, Pulled
from al_pipeline.labellers.oracle import OracleLabeller
from al_pipeline.state import State

LABELLERS = ("oracle",)


def labeller_for(name: str, config: Config, state: State) -> Labeller:
    """Build the labeller called ``name``, or raise an error listing the choices."""
    if name == "oracle":
        return OracleLabeller(state)
    raise ConfigError(f"Unknown labeller '{name}'. Choose one of: {', '.join(LABELLERS)}.")


__all__ = ["LABELLERS", "Labeller", "OracleLabeller", "Pulled", "labeller_for"]
