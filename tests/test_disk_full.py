"""A really full disk (a small tmpfs mounted for the test): one line, no traceback, nothing
half-written, and a clean re-run once there is space. Skipped where mounting is not
permitted (it needs root)."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from al_pipeline.store.workspace import init_workspace
from tests.conftest import TWO_CLASSES, real_sample, run_al, snapshot


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """A tmpfs at ``tmp_path/disk``; call it with a size (``"2M"``) to mount or resize."""
    point = tmp_path / "disk"
    point.mkdir()
    mounted = False

    def size(value: str) -> Path:
        nonlocal mounted
        options = f"size={value}" + (",remount" if mounted else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()})")
        mounted = True
        return point

    yield size
    if mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def _integrity(database: Path) -> str:
    with sqlite3.connect(database) as db:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])


@pytest.mark.slow
def test_pool_add_on_a_full_disk_says_so_and_a_rerun_completes(
    small_disk: Callable[[str], Path], tmp_path: Path, make_images: Callable[..., list[Path]]
) -> None:
    make_images(tmp_path / "photos", 1500)
    root = init_workspace(small_disk("400K") / "ws", TWO_CLASSES).config.root
    full = run_al("-w", str(root), "pool", "add", str(tmp_path / "photos"))
    assert full.returncode == 1, full.stderr
    assert "Disk full" in full.stderr and "Traceback" not in full.stderr
    assert _integrity(root / "state.sqlite3") == "ok"
    small_disk("64M")
    again = run_al("-w", str(root), "pool", "add", str(tmp_path / "photos"), "--json")
    assert again.returncode == 0, again.stderr
    with sqlite3.connect(root / "state.sqlite3") as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT sha256) FROM items").fetchone() == (
            1500,
            1500,
        )


@pytest.mark.integration
@pytest.mark.slow
def test_train_on_a_full_disk_changes_nothing_and_a_rerun_trains(
    small_disk: Callable[[str], Path], tmp_path: Path, keras_home: Path
) -> None:
    photos = tmp_path / "photos"
    for cls, files in real_sample(12, seed=3).items():
        (photos / cls).mkdir(parents=True)
        for path in files:
            shutil.copy(path, photos / cls / path.name)
    root = init_workspace(small_disk("3M") / "ws", TWO_CLASSES).config.root
    env = {"KERAS_HOME": str(keras_home), "AL_OFFLINE": "1"}
    assert run_al("-w", str(root), "pool", "add", str(photos), "--labelled").returncode == 0
    first = run_al("-w", str(root), "train", "--epochs", "2", env=env)
    assert first.returncode == 1, first.stderr
    assert "Disk full" in first.stderr and "Traceback" not in first.stderr
    # The first try cached the backbone's features (valid rows, checksummed); from then on a
    # refused training changes nothing at all.
    before = snapshot(root)
    second = run_al("-w", str(root), "train", "--epochs", "2", env=env)
    assert second.returncode == 1 and "Disk full" in second.stderr
    assert snapshot(root) == before
    assert not list((root / "checkpoints").iterdir())
    assert _integrity(root / "state.sqlite3") == "ok"
    small_disk("128M")
    third = run_al("-w", str(root), "train", "--epochs", "2", "--json", env=env)
    assert third.returncode == 0, third.stderr
    assert [p.name for p in (root / "checkpoints").iterdir()] == ["train-001"]
