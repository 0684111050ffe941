"""The embedding cache checks its rows: damage is found and mended, never used."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import numpy as np

from al_pipeline.config import Config
from al_pipeline.model.backbones import Weights, build_backbone
from al_pipeline.model.embeddings import embed
from al_pipeline.store.state import State


def test_a_damaged_feature_file_is_found_and_its_rows_computed_again(
    workspace: Config, state: State, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    backbone = build_backbone("basic_cnn", 32, Weights("none"), workspace.keras_home)
    items = [(f"{i:064x}", p) for i, p in enumerate(make_images(tmp_path / "p", 6))]
    first = embed(state, workspace.cache_dir, backbone, items)
    clean = first.features()
    file = first.cache.file
    assert embed(state, workspace.cache_dir, backbone, items).computed == 0

    row = backbone.dim * 2
    data = bytearray(file.read_bytes())
    data[2 * row : 3 * row] = os.urandom(row)  # one row changed in place, same size
    file.write_bytes(bytes(data))
    mended = embed(state, workspace.cache_dir, backbone, items)
    assert (mended.computed, mended.cache.damaged) == (1, 1)
    np.testing.assert_array_equal(mended.features(), clean)

    file.write_bytes(os.urandom(file.stat().st_size))  # all garbage, the right size
    rebuilt = embed(state, workspace.cache_dir, backbone, items)
    assert rebuilt.computed == 6
    np.testing.assert_array_equal(rebuilt.features(), clean)


def test_rows_cached_before_checksums_are_trusted_once_and_checked_after(
    workspace: Config, state: State, tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    backbone = build_backbone("basic_cnn", 32, Weights("none"), workspace.keras_home)
    items = [(f"{i:064x}", p) for i, p in enumerate(make_images(tmp_path / "p", 4))]
    embed(state, workspace.cache_dir, backbone, items)
    with sqlite3.connect(workspace.database) as db:  # as a schema-3 workspace left them
        db.execute("UPDATE embedding_rows SET crc = NULL")
        db.execute("UPDATE embedding_sets SET file_size = NULL, file_mtime_ns = NULL")
    db.close()
    assert embed(state, workspace.cache_dir, backbone, items).computed == 0
    with sqlite3.connect(workspace.database) as db:
        assert (
            db.execute("SELECT COUNT(*) FROM embedding_rows WHERE crc IS NULL").fetchone()[0] == 0
        )
    db.close()
