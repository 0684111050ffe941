"""Shared fixtures: workspaces, real shared data, and image-file makers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from al_pipeline.config import Config
from al_pipeline.state import State, open_state
from al_pipeline.workspace import init_workspace

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("AL_SHARED_DIR", REPO.parent / "shared"))
CHANDRIKADEB7 = SHARED / "data" / "face-mask-chandrikadeb7"
VOC = SHARED / "data" / "face-mask-detection-voc"
TWO_CLASSES = "with_mask,without_mask"
THREE_CLASSES = "with_mask,without_mask,mask_weared_incorrect"


def shared_or_skip(path: Path) -> Path:
    """Return a path under ../shared, or skip the test saying what is missing."""
    if not path.exists():
        pytest.skip(f"needs {path} (the shared data beside the checkout); not present here")
    return path


@pytest.fixture
def workspace(tmp_path: Path) -> Config:
    """A fresh 2-class workspace."""
    return init_workspace(tmp_path / "ws", TWO_CLASSES, "test-ws").config


@pytest.fixture
def state(workspace: Config) -> Iterator[State]:
    with open_state(workspace.database) as handle:
        yield handle


@pytest.fixture
def cli() -> CliRunner:
    return CliRunner()


def face_like(seed: int, size: int = 96) -> Image.Image:
    """A synthetic RGB image with enough structure for perceptual hashing."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(low, "RGB").resize((size, size), Image.Resampling.BICUBIC)
    return image


@pytest.fixture
def make_images() -> Callable[..., list[Path]]:
    """Write ``count`` distinct synthetic images into ``folder``."""

    def make(folder: Path, count: int, start: int = 0, suffix: str = ".png") -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for seed in range(start, start + count):
            path = folder / f"img_{seed:04d}{suffix}"
            face_like(seed).save(path)
            paths.append(path)
        return paths

    return make


def copy_sample(source: Path, target: Path, names: list[str]) -> Path:
    """Copy named files (relative to ``source``) into ``target``, keeping subfolders."""
    for name in names:
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, destination)
    return target
