"""The round lifecycle with the oracle on real photos: start, finish, run, crash, history."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from al_pipeline.config import Config, load_config
from al_pipeline.errors import ConfigError
from al_pipeline.labelling import OracleLabeller, Pulled
from al_pipeline.loop.rounds import RunPlan, finish, run, start
from al_pipeline.loop.status import RoundError, status
from al_pipeline.loop.stopping import stopping_rules
from al_pipeline.model.network import TrainingSettings
from al_pipeline.selection.strategies import STRATEGIES
from al_pipeline.store.rounds import QueuedItem
from al_pipeline.store.state import State
from cli import app
from tests.conftest import REPO, copy_workspace, run_al

pytestmark = pytest.mark.integration
SETTINGS = TrainingSettings(epochs=20)


@pytest.fixture
def oracle_ws(oracle_template: Path, tmp_path: Path, keras_home: Path) -> Config:
    return copy_workspace(oracle_template, tmp_path / "ws", keras_home)


def check_queue(state: State, queued: Sequence[QueuedItem], size: int) -> None:
    ids = [q.item_id for q in queued]
    assert len(ids) == size and len(set(ids)) == size
    test_ids = {i.item_id for i in state.labelled_items("test")}
    visible = {i.item_id for i in state.labelled_items("train")}
    assert not set(ids) & (test_ids | visible)
    assert not set(state.selectable().ids.tolist()) & set(ids)


def test_cold_start_round_then_every_strategy_with_a_model(oracle_ws: Config) -> None:
    config = oracle_ws
    with State(config.database) as state:
        oracle = OracleLabeller(state)
        first = start(config, state, oracle, strategy="margin", size=20)
        assert first.cold_start and first.model is None and first.pool_size == 200
        check_queue(state, first.queued, 20)
        assert all(q.utility is None for q in first.queued)  # cold start has no utility
        with pytest.raises(RoundError, match="still open"):
            start(config, state, oracle, strategy="margin", size=20)
        assert status(state).pending == 20
        finish(config, state, oracle, SETTINGS)
        for strategy in STRATEGIES:
            started = start(config, state, oracle, strategy=strategy, size=10, balance=True)
            assert not started.cold_start and started.model == "round-001"
            check_queue(state, started.queued, 10)
            assert all(q.predicted_class and q.confidence for q in started.queued)
            has_utility = [q.utility is not None for q in started.queued]
            assert all(has_utility) if strategy != "random" else not any(has_utility)
            state.close_round(started.round_id)


def test_three_round_run_records_complete_history(oracle_ws: Config, tmp_path: Path) -> None:
    cli = CliRunner()
    ws = ["-w", str(oracle_ws.root)]
    env = {"KERAS_HOME": str(oracle_ws.keras_home)}
    result = cli.invoke(
        app, [*ws, "run", "--rounds", "3", "--size", "20", "--epochs", "20", "--json"], env=env
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["stopped_because"] == "ran 3 rounds"
    rows = report["rows"]
    assert [r["labelled"] for r in rows] == [20, 40, 60]
    for row in rows:
        assert row["strategy"] == "auto" and row["batch_size"] == 20
        assert 0.5 <= row["accuracy"] <= 1 and 0 <= row["macro_f1"] <= 1
        assert row["roc_auc"] is not None and set(row["recall"]) == set(oracle_ws.classes)
        assert sum(row["labelled_per_class"].values()) == row["labelled"]
        assert row["checkpoint"] == row["model_version"] == f"round-{row['round']:03d}"
    assert rows[0]["pool_change"] is None and rows[2]["pool_change"] is not None
    assert rows[-1]["accuracy"] >= 0.9

    csv_file, png, parquet = tmp_path / "h.csv", tmp_path / "curve.png", tmp_path / "h.parquet"
    written = cli.invoke(
        app,
        [*ws, "history", "--csv", str(csv_file), "--plot", str(png), "--parquet", str(parquet)],
        env=env,
    )
    assert written.exit_code == 0, written.output
    assert csv_file.read_text().splitlines()[0].startswith("round,strategy,batch_size")
    assert len(csv_file.read_text().splitlines()) == 4
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (1100, 420)
    import pandas as pd

    assert pd.read_parquet(parquet)["labelled"].tolist() == [20, 40, 60]
    table = cli.invoke(app, [*ws, "history"], env=env)
    assert table.exit_code == 0 and "auto" in table.stdout

    page = cli.invoke(app, [*ws, "report", "--out", str(tmp_path / "rep")], env=env)
    assert page.exit_code == 0, page.output
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "<table" in html and "data:image/png;base64," in html
    assert html.count("data:image/jpeg;base64,") == 20
    assert "Confusion matrix" in html and "http" not in html.replace("http-equiv", "")


def test_round_killed_between_pull_and_train_finishes_on_rerun(oracle_ws: Config) -> None:
    config = oracle_ws
    with State(config.database) as state:
        oracle = OracleLabeller(state)
        started = start(config, state, oracle, strategy="random", size=15)

        def crash(phase: str, done: int, total: int | None) -> None:
            if phase == "Training":
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            finish(config, state, oracle, SETTINGS, progress=crash)
        assert status(state).labelled == 15
        assert state.checkpoint() is None and state.open_round() is not None
        done = finish(config, state, oracle, SETTINGS)
        assert done.round_id == started.round_id and done.history.labelled == 15
        assert state.open_round() is None and len(state.history()) == 1
        assert sum(state.label_counts().values()) == 15
        labels_written = sum(1 for q in state.queue(started.round_id) if q.state == "labelled")
        assert labels_written == 15


class HalfLabeller(OracleLabeller):
    """Labels only the first half of each batch, like people who stopped halfway."""

    def pull(self, round_id: int, batch: Sequence[QueuedItem]) -> Pulled:
        pulled = super().pull(round_id, batch)
        keep = {q.item_id for q in batch[: len(batch) // 2]}
        return Pulled(labels=[label for label in pulled.labels if label.item_id in keep])


def test_unfinished_round_needs_min_labelled_and_returns_the_rest(oracle_ws: Config) -> None:
    config = oracle_ws
    with State(config.database) as state:
        half = HalfLabeller(state)
        started = start(config, state, half, strategy="margin", size=20)
        with pytest.raises(RoundError, match="10 of 20 items labelled, 10 pending"):
            finish(config, state, half, SETTINGS)
        done = finish(config, state, half, SETTINGS, min_labelled=10)
        assert done.returned == 10 and done.history.labelled == 10
        back = set(state.selectable().ids.tolist())
        returned = {q.item_id for q in state.queue(started.round_id) if q.state == "returned"}
        assert len(returned) == 10 and returned <= back


def test_run_stops_at_the_label_budget(oracle_ws: Config) -> None:
    config = oracle_ws
    with State(config.database) as state:
        plan = RunPlan(5, "entropy", 20, stop=stopping_rules(budget=30))
        report = run(config, state, OracleLabeller(state), SETTINGS, plan)
    assert [r.labelled for r in report.rows] == [20, 30]
    assert report.stopped_because == "label budget reached (30 of 30)"


class OneClassLabeller(OracleLabeller):
    """Answers every item with the first class, as if a cold-start batch held only one."""

    def pull(self, round_id: int, batch: Sequence[QueuedItem]) -> Pulled:
        pulled = super().pull(round_id, batch)
        return Pulled(labels=[replace(label, class_name="with_mask") for label in pulled.labels])


def test_round_whose_labels_miss_a_class_closes_without_a_model(oracle_ws: Config) -> None:
    config = oracle_ws
    with State(config.database) as state:
        labeller = OneClassLabeller(state)
        start(config, state, labeller, strategy="margin", size=5)
        done = finish(config, state, labeller, SETTINGS)
        assert done.history.checkpoint is None and "no model" in (done.history.note or "")
        assert state.open_round() is None and state.checkpoint() is None
        assert start(config, state, OracleLabeller(state), strategy="margin", size=5).cold_start


class NewClassLabeller(OracleLabeller):
    """The oracle, except that the first two items of a batch show the new class."""

    def pull(self, round_id: int, batch: Sequence[QueuedItem]) -> Pulled:
        labels = super().pull(round_id, batch).labels
        labels[:2] = [replace(label, class_name="mask_weared_incorrect") for label in labels[:2]]
        return Pulled(labels=labels)


def test_a_class_added_to_the_workspace_cold_starts_rounds_until_it_has_a_label(
    oracle_ws: Config,
) -> None:
    """A model trained for two classes cannot score for three: rounds pick by coverage and
    close without a model while the new class has no label, then train for all three; the
    pool change compares classes by name, though the new one comes first and moves every
    index; a class taken out again while labels use it is refused."""
    config = oracle_ws
    with State(config.database) as state:
        oracle = OracleLabeller(state)
        start(config, state, oracle, strategy="margin", size=10)
        first = finish(config, state, oracle, SETTINGS)
        assert first.history.checkpoint is not None
        three = replace(config, classes=("mask_weared_incorrect", *config.classes))
        started = start(three, state, oracle, strategy="margin", size=5)
        assert started.cold_start and started.model is None
        done = finish(three, state, oracle, SETTINGS)
        assert done.history.checkpoint is None and "no model" in (done.history.note or "")
        start(three, state, NewClassLabeller(state), strategy="margin", size=10)
        trained = finish(three, state, NewClassLabeller(state), SETTINGS)
        assert trained.history.checkpoint is not None
        assert trained.history.pool_change is not None and trained.history.pool_change < 0.5
        renamed = replace(config, classes=("with_mask", "no_mask"))
        with pytest.raises(
            ConfigError, match=r"of classes mask_weared_incorrect, without_mask, wh"
        ):
            start(renamed, state, oracle, strategy="margin", size=5)
        assert state.open_round() is None


@pytest.mark.integration
@pytest.mark.slow
def test_a_run_killed_after_registering_its_model_resumes_to_the_clean_row(
    oracle_template: Path, keras_home: Path, tmp_path: Path
) -> None:
    """SIGKILL once the round's checkpoint is registered (before its evaluation is stored):
    the resumed row equals the clean run's, accuracy and pool change included."""
    env = {"KERAS_HOME": str(keras_home), "AL_OFFLINE": "1"}
    args = ["run", "--rounds", "2", "--size", "8", "--labeller", "oracle", "--epochs", "5"]
    clean = copy_workspace(oracle_template, tmp_path / "clean", keras_home)
    assert run_al("-w", str(clean.root), *args, env=env).returncode == 0
    killed = copy_workspace(oracle_template, tmp_path / "killed", keras_home)
    child = subprocess.Popen(
        [sys.executable, "-m", "cli", "-w", str(killed.root), *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    query = "SELECT COUNT(*) FROM checkpoints WHERE tag = 'round-002'"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and child.poll() is None:
        with sqlite3.connect(killed.database) as db:
            if db.execute(query).fetchone()[0]:
                break
        time.sleep(0.01)
    child.send_signal(signal.SIGKILL)
    child.wait()
    with State(killed.database) as state:
        assert len(state.history()) == 1 and state.open_round() is not None
    resumed = run_al("-w", str(killed.root), "round", "finish", "--epochs", "5", env=env)
    assert resumed.returncode == 0, resumed.stderr
    rows = []
    for config in (clean, killed):
        with State(config.database) as state:
            _, row = state.history()
        kept = row.to_json().items()
        rows.append({k: v for k, v in kept if not k.endswith(("seconds", "timestamp"))})
    assert rows[0]["accuracy"] is not None and rows[0]["pool_change"] is not None
    assert rows[1] == rows[0]


@pytest.mark.slow
def test_rounds_fine_tune_when_the_workspace_says_so(oracle_ws: Config) -> None:
    """fine_tune_layers in al.toml: every training fine-tunes the backbone (al train's and
    each round's), the next round scores the pool with the newest model's own backbone,
    and once a round has finished, earlier rounds' cached features are deleted (the
    ImageNet ones and those of a model a person trained stay)."""
    toml = oracle_ws.root / "al.toml"
    text = toml.read_text().replace("image_size = 224", "image_size = 64")
    text = text.replace("fine_tune_layers = 0", "fine_tune_layers = 10")
    toml.write_text(text.replace("fine_tune_epochs = 5", "fine_tune_epochs = 1"))
    env = {"KERAS_HOME": str(oracle_ws.keras_home)}
    ws = ["-w", str(oracle_ws.root)]
    mine = ["train", "--tag", "mine", "--seed", "1"]  # a person's model, other weights
    for command in (["run", "--rounds", "1", "--size", "20"], mine):
        result = CliRunner().invoke(app, [*ws, *command, "--epochs", "5"], env=env)
        assert result.exit_code == 0, result.output
    config = replace(load_config(oracle_ws.root), keras_home=oracle_ws.keras_home)
    with State(config.database) as state:
        started = start(config, state, OracleLabeller(state), strategy="margin", size=20)
        assert started.model == "mine"
    scored_first = weights_scored(config)
    finished = CliRunner().invoke(app, [*ws, "round", "finish", "--epochs", "5"], env=env)
    assert finished.exit_code == 0, finished.output
    with State(config.database) as state:
        metas = [c.meta for c in state.checkpoints()]
    assert [(m.tag, m.fine_tuned, m.fine_tune_layers, m.fine_tune_epochs) for m in metas] == [
        ("round-001", True, 10, 1),
        ("mine", True, 10, 1),
        ("round-002", True, 10, 1),
    ]
    old, own, new = (m.features_digest for m in metas)
    assert own.startswith("weights:") and own != old and {old, own} <= scored_first
    scored = weights_scored(config)
    assert {own, new} <= scored and old not in scored and len(scored) == 3  # + ImageNet's
    with sqlite3.connect(config.database) as db:
        digests = {row[0] for row in db.execute("SELECT digest FROM embedding_sets")}
    files = {p.name for p in config.cache_dir.iterdir()}
    assert {name.rsplit("-", 1)[1].removesuffix(".f16") for name in files} == digests, files


def weights_scored(config: Config) -> set[str]:
    """The weights the workspace's feature cache holds features of."""
    with sqlite3.connect(config.database) as db:
        return {row[0] for row in db.execute("SELECT weights_digest FROM embedding_sets")}
