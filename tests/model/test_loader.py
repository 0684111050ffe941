"""Decoding in worker processes gives the same pixels and failures as decoding in-line."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from al_pipeline.errors import PipelineError
from al_pipeline.ingest.images import is_image_name
from al_pipeline.model import loader
from al_pipeline.model.loader import Batch, decode, image_batches
from tests.ingest.test_folders import build_odd_folder


def _odd_files(tmp_path: Path) -> list[Path]:
    build_odd_folder(tmp_path / "odd", tmp_path / "outside.png")
    files = sorted(p for p in (tmp_path / "odd").rglob("*") if is_image_name(p))
    return files * 3  # more files than one worker task, so batches span several tasks


def _inline(files: list[Path], size: int) -> tuple[dict[int, NDArray[np.uint8]], dict[int, str]]:
    pixels: dict[int, NDArray[np.uint8]] = {}
    failures: dict[int, str] = {}
    for position, path in enumerate(files):
        batch = loader.decode_chunk([path], position, size)
        if batch.indices:
            pixels[position] = decode(path, size)
        failures.update(batch.failures)
    return pixels, failures


def _gathered(batches: list[Batch]) -> tuple[dict[int, NDArray[np.uint8]], dict[int, str]]:
    pixels = {i: row for b in batches for i, row in zip(b.indices, b.pixels, strict=True)}
    return pixels, {i: why for b in batches for i, why in b.failures}


@pytest.mark.parametrize("batch_size", [7, 40])
def test_worker_processes_decode_odd_files_exactly_as_inline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, batch_size: int
) -> None:
    monkeypatch.setattr(loader, "CHUNK", 16)
    files = _odd_files(tmp_path)
    expected_pixels, expected_failures = _inline(files, 48)
    batches = list(image_batches(files, 48, batch_size, workers=2, processes=True))
    pixels, failures = _gathered(batches)

    assert failures == expected_failures and len(failures) >= 3 * 6
    assert sorted(pixels) == sorted(expected_pixels)
    for position, row in pixels.items():
        assert row.dtype == np.uint8
        np.testing.assert_array_equal(row, expected_pixels[position])
    starts = [min(b.indices + [i for i, _ in b.failures]) for b in batches]
    assert starts == list(range(0, len(files), batch_size))  # in order, one batch per chunk


def test_threads_and_processes_agree(tmp_path: Path) -> None:
    files = _odd_files(tmp_path)
    threads = _gathered(list(image_batches(files, 32, 8, processes=False)))
    processes = _gathered(list(image_batches(files, 32, 8, workers=2, processes=True)))
    assert threads[1] == processes[1]
    assert all(np.array_equal(threads[0][i], processes[0][i]) for i in threads[0])


def test_an_abandoned_iteration_frees_its_shared_memory(tmp_path: Path) -> None:
    files = _odd_files(tmp_path)
    before = set(Path("/dev/shm").glob("psm_*"))
    batches = image_batches(files, 32, 4, workers=2, processes=True)
    next(batches)
    assert set(Path("/dev/shm").glob("psm_*")) - before  # the ring exists while iterating
    batches.close()
    assert set(Path("/dev/shm").glob("psm_*")) - before == set()


def test_a_killed_decoding_process_is_one_clear_error_and_the_next_call_works(
    tmp_path: Path,
) -> None:
    files = _odd_files(tmp_path) * 4
    batches = image_batches(files, 32, 4, workers=2, processes=True)
    next(batches)
    for child in multiprocessing.active_children():
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
    with pytest.raises(PipelineError, match="died"):
        list(batches)
    again = _gathered(list(image_batches(files[:20], 32, 4, workers=2, processes=True)))
    assert len(again[0]) + len(again[1]) == 20


def test_without_room_in_dev_shm_threads_decode_instead(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = _odd_files(tmp_path)
    monkeypatch.setattr(loader, "_shared_memory_fits", lambda size: False)
    monkeypatch.setattr(loader, "_process_batches", None)  # fails if called
    pixels, failures = _gathered(list(image_batches(files, 32, 8, workers=2, processes=True)))
    expected_pixels, expected_failures = _inline(files, 32)
    assert failures == expected_failures
    assert all(np.array_equal(pixels[i], expected_pixels[i]) for i in expected_pixels)
