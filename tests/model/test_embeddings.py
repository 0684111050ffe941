"""The embedding cache checks its rows: damage is found and mended, never used."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from al_pipeline.config import Config
from al_pipeline.model.backbones import Backbone, Weights, build_backbone
from al_pipeline.model.embeddings import (
    Embedded,
    EmbeddingCache,
    ShardWriter,
    drop_features,
    embed,
    widen,
)
from al_pipeline.store.db import sha_key
from al_pipeline.store.state import State


@pytest.fixture
def backbone(workspace: Config) -> Backbone:
    """A small untrained CNN: the cache does not care what computed its rows."""
    return build_backbone("basic_cnn", 32, Weights("none"), workspace.keras_home)


def test_a_damaged_feature_file_is_found_and_its_rows_computed_again(
    workspace: Config,
    state: State,
    backbone: Backbone,
    tmp_path: Path,
    make_images: Callable[..., list[Path]],
) -> None:
    items = [(f"{i:016x}" * 4, p) for i, p in enumerate(make_images(tmp_path / "p", 6))]
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


def test_dropped_features_lose_files_and_index_and_a_half_drop_is_computed_again(
    workspace: Config,
    state: State,
    backbone: Backbone,
    tmp_path: Path,
    make_images: Callable[..., list[Path]],
) -> None:
    items = [(f"{i:016x}" * 4, p) for i, p in enumerate(make_images(tmp_path / "p", 4))]
    other = replace(backbone, weights_digest="weights:other")
    kept = embed(state, workspace.cache_dir, other, items).cache.file
    first = embed(state, workspace.cache_dir, backbone, items)
    clean = first.features()

    first.cache.file.unlink()  # killed after the files went, before the index did
    again = embed(state, workspace.cache_dir, backbone, items)
    assert again.computed == 4
    np.testing.assert_array_equal(again.features(), clean)

    assert drop_features(workspace, state, {backbone.weights_digest}) == 1
    assert not again.cache.file.exists() and kept.exists()
    assert state.embedding_sets_of({backbone.weights_digest}) == []
    assert embed(state, workspace.cache_dir, other, items).computed == 0
    assert embed(state, workspace.cache_dir, backbone, items).computed == 4


def _index_a_row_per_item(database: Path, shas: list[str], checksums: bool) -> None:
    """Index the cache as schema 6 did (a row per item), or as schema 3 did (no checksums,
    no file state)."""
    by_key = {sha_key(sha): sha for sha in shas}
    with sqlite3.connect(database) as db:
        for digest, first, keys, crcs in db.execute("SELECT * FROM embedding_blocks").fetchall():
            for offset, (key, crc) in enumerate(
                zip(np.frombuffer(keys, np.int64), np.frombuffer(crcs, np.int64), strict=True)
            ):
                db.execute(
                    "INSERT INTO embedding_rows (digest, sha256, row, crc) VALUES (?, ?, ?, ?)",
                    (digest, by_key[int(key)], first + offset, int(crc) if checksums else None),
                )
        db.execute("DELETE FROM embedding_blocks")
        if not checksums:
            db.execute("UPDATE embedding_sets SET file_size = NULL, file_mtime_ns = NULL")
    db.close()


@pytest.mark.parametrize("checksums", [True, False], ids=["schema-6", "schema-3"])
def test_a_cache_indexed_a_row_per_item_moves_into_blocks_and_is_reused(
    workspace: Config,
    state: State,
    tmp_path: Path,
    make_images: Callable[..., list[Path]],
    checksums: bool,
    backbone: Backbone,
) -> None:
    items = [(f"{i:016x}" * 4, p) for i, p in enumerate(make_images(tmp_path / "p", 4))]
    clean = embed(state, workspace.cache_dir, backbone, items).features()
    _index_a_row_per_item(workspace.database, [sha for sha, _ in items], checksums)

    again = embed(state, workspace.cache_dir, backbone, items)
    assert (again.computed, again.cache.damaged) == (0, 0)
    np.testing.assert_array_equal(again.features(), clean)
    with sqlite3.connect(workspace.database) as db:
        assert db.execute("SELECT COUNT(*) FROM embedding_rows").fetchone()[0] == 0
        crcs = [
            np.frombuffer(r[0], np.int64) for r in db.execute("SELECT crcs FROM embedding_blocks")
        ]
    db.close()
    assert (np.concatenate(crcs) >= 0).all()  # unchecked rows got their checksum


def test_lookup_finds_each_key_at_its_latest_row_and_misses_the_rest(
    workspace: Config, state: State, backbone: Backbone
) -> None:
    cache = EmbeddingCache(state, workspace.cache_dir, backbone)
    features = np.arange(4 * backbone.dim, dtype=np.float32).reshape(4, -1)
    cache.append(np.array([30, 10, 20], np.int64), features[:3])
    cache.append(np.array([10], np.int64), features[3:])  # computed again: the later row wins
    rows = cache.lookup(np.array([10, 20, 30, 40, -(2**63)], np.int64))
    np.testing.assert_array_equal(rows, [3, 2, 0, -1, -1])
    reopened = EmbeddingCache(state, workspace.cache_dir, backbone)
    np.testing.assert_array_equal(reopened.lookup(np.array([10, 40], np.int64)), [3, -1])
    np.testing.assert_array_equal(reopened.read(np.array([3, 1])), features[[3, 1]])


def test_map_streams_rows_in_file_order_and_answers_in_request_order(
    workspace: Config, state: State, backbone: Backbone
) -> None:
    cache = EmbeddingCache(state, workspace.cache_dir, backbone)
    rng = np.random.default_rng(0)
    cache.append(np.arange(100, dtype=np.int64), rng.random((100, backbone.dim)))
    rows = np.concatenate([rng.permutation(40), [99, 70, 41]]).astype(np.int64)  # near and far
    embedded = Embedded(cache, rows, np.arange(len(rows)), computed=0)
    mapped = embedded.map(lambda x: x[:, :3] * 2, size=7)
    assert mapped is not None
    np.testing.assert_array_equal(mapped, cache.read(rows)[:, :3] * 2)


def test_widen_is_numpy_cast_for_every_half_precision_value() -> None:
    every = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    finite = every[np.isfinite(every)].reshape(-1, 8)
    np.testing.assert_array_equal(widen(finite), finite.astype(np.float32))  # subnormals too
    special = np.array([[np.inf, -np.inf, np.nan, 1.5]], np.float16)
    np.testing.assert_array_equal(widen(special), special.astype(np.float32))


def test_rows_a_worker_wrote_to_its_shard_are_read_mapped_and_checked_like_the_rest(
    workspace: Config, state: State, backbone: Backbone
) -> None:
    cache = EmbeddingCache(state, workspace.cache_dir, backbone)
    rng = np.random.default_rng(1)
    own, theirs = rng.random((3, backbone.dim)), rng.random((4, backbone.dim))
    cache.append(np.array([1, 2, 3], np.int64), own)
    writer = ShardWriter(cache.file)  # as a Ray worker would, in the same folder
    rows, crcs = writer.write(theirs)
    cache.index_written(rows, np.array([10, 11, 12, 13], np.int64), crcs)
    cache.record_shards()

    reopened = EmbeddingCache(state, workspace.cache_dir, backbone)
    found = reopened.lookup(np.array([13, 1, 11, 3], np.int64))
    expected = np.concatenate([theirs[[3]], own[[0]], theirs[[1]], own[[2]]]).astype(np.float16)
    np.testing.assert_array_equal(reopened.read(found), expected)
    mapped = Embedded(reopened, found, np.arange(4), computed=0).map(lambda x: x * 1, size=2)
    np.testing.assert_array_equal(mapped, expected)

    data = bytearray(writer.path.read_bytes())
    data[: backbone.dim * 2] = os.urandom(backbone.dim * 2)  # the shard's first row
    writer.path.write_bytes(bytes(data))
    checked = EmbeddingCache(state, workspace.cache_dir, backbone)
    assert checked.damaged == 1
    assert checked.lookup(np.array([10, 11, 1], np.int64)).tolist()[0] == -1
    assert (checked.lookup(np.array([11, 1], np.int64)) >= 0).all()
