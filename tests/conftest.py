"""Shared fixtures: workspaces, real shared data, and image-file makers."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from al_pipeline.config import Config
from al_pipeline.store.state import State, open_state
from al_pipeline.store.workspace import init_workspace

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


WEIGHTS = SHARED / "weights" / "keras-derived"
MOBILENET_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


@pytest.fixture(scope="session")
def keras_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A KERAS_HOME whose models/ holds the shared MobileNetV2 ImageNet weights."""
    source = shared_or_skip(WEIGHTS / MOBILENET_FILE)
    home = tmp_path_factory.mktemp("keras-home")
    (home / "models").mkdir()
    shutil.copy(source, home / "models" / MOBILENET_FILE)
    return home


def real_sample(per_class: int, seed: int = 0) -> dict[str, list[Path]]:
    """A seeded sample of real chandrikadeb7 photos per class (no augmented copies)."""
    import random

    source = shared_or_skip(CHANDRIKADEB7)
    rng = random.Random(seed)
    sample = {}
    for cls in ("with_mask", "without_mask"):
        files = sorted(p for p in (source / cls).iterdir() if not p.name.startswith("augmented"))
        sample[cls] = rng.sample(files, per_class)
    return sample


@dataclass
class Trained:
    """A workspace with real photos (train + test split) and one trained checkpoint."""

    config: Config
    report: Any
    photos: Path


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, keras_home: Path) -> Trained:
    """Session-wide: 300 real photos, a 1/3 test split, MobileNetV2 + ImageNet weights,
    trained once."""
    from dataclasses import replace

    from al_pipeline.ingest.folders import add_folder
    from al_pipeline.loop.rounds import train_and_evaluate
    from al_pipeline.model.network import TrainingSettings

    root = tmp_path_factory.mktemp("trained")
    photos = root / "photos"
    for cls, files in real_sample(150).items():
        (photos / cls).mkdir(parents=True)
        for path in files:
            shutil.copy(path, photos / cls / path.name)
    config = replace(init_workspace(root / "ws", TWO_CLASSES).config, keras_home=keras_home)
    with open_state(config.database) as state:
        add_folder(config, state, photos, labelled=True, test_fraction=1 / 3)
        report = train_and_evaluate(config, state, TrainingSettings(epochs=30))
    return Trained(config, report, photos)


@pytest.fixture(scope="session")
def oracle_template(tmp_path_factory: pytest.TempPathFactory, keras_home: Path) -> Path:
    """Session-wide: 300 real photos with hidden (oracle) labels and a visible 1/3 test
    split, features cached. Tests copy it with :func:`copy_workspace`."""
    from al_pipeline.ingest.folders import add_folder
    from al_pipeline.model.backbones import workspace_backbone
    from al_pipeline.model.embeddings import embed

    root = tmp_path_factory.mktemp("oracle")
    photos = root / "photos"
    for cls, files in real_sample(150, seed=1).items():
        (photos / cls).mkdir(parents=True)
        for path in files:
            shutil.copy(path, photos / cls / path.name)
    config = init_workspace(root / "ws", TWO_CLASSES).config
    with open_state(config.database) as state:
        add_folder(config, state, photos, labelled=True, oracle=True, test_fraction=1 / 3)
        items = state.items_in_pool("photos")
        embed(
            state,
            config.cache_dir,
            workspace_backbone(_with_home(config, keras_home)),
            [(i.sha256, config.root / i.path) for i in items],
        )
    return config.root


def _with_home(config: Config, keras_home: Path) -> Config:
    from dataclasses import replace

    return replace(config, keras_home=keras_home)


def copy_workspace(template: Path, target: Path, keras_home: Path) -> Config:
    """A private copy of a workspace (its photos stay where they are)."""
    from al_pipeline.config import load_config

    shutil.copytree(template, target)
    return _with_home(load_config(target), keras_home)


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class StudioServer:
    """The session's real Label Studio server: the workspace that runs it, its connection,
    and the folder it serves files from (pytest's base temp dir, covering every test's)."""

    config: Config
    url: str
    api_key: str
    root: Path

    def connect(self, config: Config) -> None:
        from al_pipeline.labelling.labelstudio.server import connect

        connect(config, self.url, self.api_key, self.root)


@pytest.fixture(scope="session")
def studio_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StudioServer]:
    """One Label Studio on 127.0.0.1 for the session, started as 'al studio up' does."""
    from al_pipeline.labelling.labelstudio.connection import connection
    from al_pipeline.labelling.labelstudio.server import down, up

    root = tmp_path_factory.getbasetemp().resolve()
    config = init_workspace(tmp_path_factory.mktemp("studio") / "ws", TWO_CLASSES).config
    with open_state(config.database) as state:
        server = up(config, state, free_port(), root=root)
    try:
        yield StudioServer(config, server.url, connection(config).api_key, root)
    finally:
        down(config)


def snapshot(root: Path) -> tuple[str, dict[str, int]]:
    """The workspace as a refusing command must leave it: the state database's content
    (a SQL dump, read-only) and every file's size (the lock file aside)."""
    import sqlite3

    database = root / "state.sqlite3"
    dump = ""
    if database.is_file():
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            dump = "\n".join(db.iterdump())
    files = {
        str(p.relative_to(root)): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".al.lock" and not p.name.startswith("state.sqlite3")
    }
    return dump, files


def run_al(*args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> Any:
    """Run the real `al` in a child process, with ``env`` added to this one's environment;
    the completed process (text output)."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=cwd or REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def modules_after(root: Path, *command: str, watch: tuple[str, ...]) -> tuple[Any, list[str]]:
    """Run ``al -w root COMMAND`` in a child process; the completed process and which of
    the ``watch`` modules it had imported by the end."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\nfrom cli import app\ntry:\n    app(sys.argv[1:])\nexcept SystemExit:\n"
        f"    pass\nprint('loaded:', json.dumps([m for m in {watch!r} if m in sys.modules]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "-w", str(root), *command],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("loaded: ")), None)
    assert line is not None, done.stderr
    return done, json.loads(line.removeprefix("loaded: "))


def strict_json(text: str) -> Any:
    """Parse JSON as a strict parser would: NaN and Infinity are not JSON."""
    import json

    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)
