"""The state store: one SQLite database per workspace, with a versioned schema.

:class:`State` is the handle every command opens. Its queries live by concern in the
store's modules (:mod:`~al_pipeline.store.items`, :mod:`~al_pipeline.store.labels`,
:mod:`~al_pipeline.store.rounds`, :mod:`~al_pipeline.store.models`,
:mod:`~al_pipeline.store.embeddings`, :mod:`~al_pipeline.store.catalog`), over
:class:`~al_pipeline.store.db.Database` (connection, migrations, ``atomic()``).
"""

from __future__ import annotations

from pathlib import Path

from al_pipeline.store.catalog import Catalog
from al_pipeline.store.embeddings import Embeddings
from al_pipeline.store.items import Items
from al_pipeline.store.models import Models
from al_pipeline.store.rounds import Rounds


class State(Items, Catalog, Rounds, Models, Embeddings):
    """Handle on one workspace's state database."""


def open_state(path: Path) -> State:
    """Open (creating and migrating as needed) the state database at ``path``."""
    return State(path)
