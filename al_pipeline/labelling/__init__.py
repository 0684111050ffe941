"""[label] Labellers: where queued items go to be labelled and where labels come from."""

from __future__ import annotations

from al_pipeline.config import Config
from al_pipeline.errors import ConfigError
from al_pipeline.labelling.base import Labeller, Pulled
from al_pipeline.labelling.oracle import OracleLabeller
from al_pipeline.store.state import State

LABELLERS = ("auto", "labelstudio", "oracle")


def labeller_for(name: str, config: Config, state: State) -> Labeller:
    """Build the labeller called ``name``, or raise an error listing the choices.

    ``auto`` is Label Studio when the workspace has a server (``al studio up`` or ``al
    studio connect``, or ``$LABEL_STUDIO_URL``), else the oracle.
    """
    from al_pipeline.labelling.labelstudio.connection import connection, has_connection

    if name == "auto":
        name = "labelstudio" if has_connection(config) else "oracle"
    if name == "oracle":
        return OracleLabeller(state)
    if name == "labelstudio":
        from al_pipeline.labelling.labelstudio.labeller import LabelStudioLabeller

        return LabelStudioLabeller(config, state, connection(config))
    raise ConfigError(f"Unknown labeller '{name}'. Choose one of: {', '.join(LABELLERS)}.")


def round_labeller(config: Config, state: State) -> Labeller:
    """The labeller the open round was pushed to (the oracle when no round is open)."""
    open_round = state.open_round()
    return labeller_for(open_round.labeller if open_round else "auto", config, state)


__all__ = ["LABELLERS", "Labeller", "OracleLabeller", "Pulled", "labeller_for", "round_labeller"]
