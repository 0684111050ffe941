"""Simulation: strategies against random with the oracle; table, CSV and curves."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from al_pipeline.errors import PipelineError
from al_pipeline.ingest.folders import add_folder
from al_pipeline.labelling import OracleLabeller
from al_pipeline.loop.rounds import RunPlan, run
from al_pipeline.loop.simulate import FullData, Simulation, SimulationPlan, simulate
from al_pipeline.model.network import TrainingSettings
from al_pipeline.records import ClassMetrics, Metrics
from al_pipeline.reporting.simulation import (
    SimulationResult,
    efficiency_table,
    interval,
    plot_panels,
    rarest_class,
    simulate_and_report,
    with_rare_share,
)
from al_pipeline.store.labels import PulledLabel
from al_pipeline.store.state import State
from cli import app
from tests.conftest import copy_workspace, face_like


@pytest.mark.integration
def test_simulation_on_real_photos(oracle_template: Path, tmp_path: Path, keras_home: Path) -> None:
    """Two strategies on two photo-grouped test splits: the second split is drawn anew in a
    copy, the workspace is left as it was, and the table and curves say what each run did.
    Photos added without labels (a pool to label for real) are left out of the replay."""
    config = copy_workspace(oracle_template, tmp_path / "ws", keras_home)
    unlabelled = tmp_path / "to-label"
    unlabelled.mkdir()
    for seed in range(40):
        face_like(seed).save(unlabelled / f"{seed}.png")
    with State(config.database) as state:
        add_folder(config, state, unlabelled)
        selectable = len(state.selectable())
        before = [c.split for c in state.split_candidates()]
        plan = SimulationPlan(
            ["margin", "random"], 4, 10, 2, 1, TrainingSettings(epochs=10), splits=2
        )
        result = simulate_and_report(config, state, tmp_path / "out", plan)
        assert state.open_round() is None and state.history() == []
        assert [c.split for c in state.split_candidates()] == before
        assert len(state.selectable()) == selectable
    with State(tmp_path / "out" / "split1" / "base.sqlite3") as copy:
        assert [c.split for c in copy.split_candidates()] != before
    runs = pd.read_csv(result.csv)
    assert (
        sorted(runs.groupby(["strategy", "split"])["labelled"].apply(list).tolist())
        == [[4, 14, 24]] * 4
    )
    assert runs["accuracy"].between(0.4, 1).all()
    queried = runs.filter(like="queried_").sum(axis=1)
    assert (queried[runs["round"] > 0] == 10).all()  # each round's batch, by class
    assert result.full_labels == 200 and 0.9 <= result.full_accuracy <= 1
    # 150 photos of each class: neither is rare, so no rare-class columns or curves.
    assert result.splits == 2 and result.rare_class is None and result.panels is None
    table = result.table.set_index("strategy")
    assert list(table.index) == ["margin", "random"] and (table["runs"] == 2).all()
    assert table["final_macro_f1_ci"].notna().all() and "rare_share_mean" not in table
    assert not (tmp_path / "out" / "rare_class_curves.png").exists()
    with Image.open(result.plot) as image:
        assert image.format == "PNG" and image.size == (800, 500)


@pytest.mark.integration
def test_a_simulation_after_al_run_replays_from_the_seed_labels(
    oracle_template: Path, tmp_path: Path, keras_home: Path
) -> None:
    """The README runs 'al run' and then 'al simulate' in one workspace. The runs must start
    from their seed labels, not from the labels 'al run' revealed, nor carry its history;
    and the rounds must not keep the workspace from drawing other splits."""
    config = copy_workspace(oracle_template, tmp_path / "ws", keras_home)
    settings = TrainingSettings(epochs=5)
    with State(config.database) as state:
        hidden = len(state.hidden_items())
        run(config, state, OracleLabeller(state), settings, RunPlan(2, "margin", 10))
        history, left = state.history(), len(state.hidden_items())
        plan = SimulationPlan(["random"], 4, 10, 1, 1, settings, splits=2)
        result = simulate_and_report(config, state, tmp_path / "out", plan)
        assert state.history() == history and len(state.hidden_items()) == left
    assert left == hidden - 20 and len(history) == 2
    runs = pd.read_csv(result.csv)
    assert runs.groupby("split")["labelled"].apply(list).tolist() == [[4, 14]] * 2
    assert set(runs["strategy"]) == {"random"}
    assert result.full_labels == hidden
    with State(tmp_path / "out" / "base.sqlite3") as base:
        # The workspace's checkpoints are not the runs': a run would drop their features.
        assert base.rounds() == [] and base.checkpoints() == [] and base.history() == []


def margin_and_random(margin: list[float], random: list[float]) -> pd.DataFrame:
    """One seed of each strategy, accuracy measured at 10, 20 and 30 labels."""
    return pd.DataFrame(
        {
            "strategy": ["margin"] * 3 + ["random"] * 3,
            "seed": [0] * 6,
            "labelled": [10, 20, 30] * 2,
            "accuracy": margin + random,
        }
    )


def test_efficiency_table_counts_labels_to_targets() -> None:
    runs = margin_and_random(margin=[0.90, 0.985, 0.99], random=[0.90, 0.95, 0.981])
    table = efficiency_table(runs, full_accuracy=0.99).set_index("strategy")
    assert table.loc["margin", "labels_to_within_1pt"] == 20
    assert table.loc["random", "labels_to_within_1pt"] == 30
    assert table.loc["margin", "ratio_within_1pt"] == pytest.approx(1.5)
    assert table.loc["margin", "labels_to_full"] == 30
    assert table["labels_to_full"].isna()["random"]
    assert table.loc["random", "reached_full"] == "0/1"


def test_simulate_refuses_a_workspace_without_hidden_labels(
    tmp_path: Path, keras_home: Path
) -> None:
    from al_pipeline.store.workspace import init_workspace

    config = init_workspace(tmp_path / "ws", "a,b").config
    with State(config.database) as state, pytest.raises(PipelineError, match="--oracle"):
        plan = SimulationPlan(["margin"], 2, 2, 1, 1, TrainingSettings(epochs=1))
        simulate(config, state, tmp_path / "out", plan)


@pytest.mark.integration
def test_simulate_command_on_a_dataset_folder(
    tmp_path: Path, keras_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a relative --out, as a person types it: the runs' workspaces go under it, from
    the current folder (they once went under the dataset's workspace and failed)."""
    monkeypatch.chdir(tmp_path)
    dataset = tmp_path / "data"
    for cls, offset in (("cats", 0), ("dogs", 500)):
        (dataset / cls).mkdir(parents=True)
        for seed in range(offset, offset + 20):
            face_like(seed, 64).save(dataset / cls / f"{seed}.png")
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--dataset",
            str(dataset),
            "--strategies",
            "margin+balance,random",
            "--initial",
            "2",
            "--size",
            "4",
            "--rounds",
            "1",
            "--seeds",
            "1",
            "--epochs",
            "5",
            "--imbalance",
            "none",
            "--out",
            "out",
            "--json",
        ],
        env={"KERAS_HOME": str(keras_home)},
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert [row["strategy"] for row in summary["table"]] == ["margin+balance", "random"]
    assert Path(summary["plot"]).is_file() and Path(summary["csv"]).is_file()
    meta = json.loads(
        next((tmp_path / "out").glob("random-seed0/checkpoints/*/meta.json")).read_text()
    )
    assert meta["imbalance"] == "none"
    bad = CliRunner().invoke(
        app,
        [
            "simulate",
            "--dataset",
            str(dataset),
            "--strategies",
            "margin,foo+balance",
            "--out",
            str(tmp_path / "out"),
        ],
        env={"KERAS_HOME": str(keras_home)},
    )
    assert bad.exit_code == 1 and "Unknown strategy 'foo'" in bad.output


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--image-size", "5000"], "at most 1024"),
        (["--image-size", "8"], "at least 32"),
        (["--splits", "0"], "--splits must be at least 1"),
        (["--initial", "1"], "--initial 1 is too few"),
        (["--strategies", "nope"], "Unknown strategy 'nope'"),
        (["--test-fraction", "nan"], "--test-fraction must be between 0 and 1"),
    ],
)
def test_bad_flags_on_a_dataset_leave_no_workspace_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str], message: str
) -> None:
    """The flags are checked before the dataset's workspace is made and its photos hashed:
    a typo must not leave ./simulation behind."""
    monkeypatch.chdir(tmp_path)
    dataset = tmp_path / "data"
    for cls in ("cats", "dogs"):
        (dataset / cls).mkdir(parents=True)
        face_like(len(cls), 64).save(dataset / cls / "1.png")
    result = CliRunner().invoke(app, ["simulate", "--dataset", str(dataset), *flags])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_ratio_is_a_lower_bound_when_random_never_gets_there() -> None:
    runs = margin_and_random(margin=[0.90, 0.985, 0.99], random=[0.90, 0.95, 0.97])
    table = efficiency_table(runs, full_accuracy=0.99).set_index("strategy")
    assert table["ratio_within_1pt"].isna()["margin"]
    assert table.loc["margin", "ratio_within_1pt_at_least"] == pytest.approx(1.5)


def test_the_table_gives_means_with_intervals_and_rare_class_figures_per_split(
    tmp_path: Path,
) -> None:
    """Two splits with their own all-labels references; the rare class 'c' is queried 2 of
    10 times in split 0 and 4 of 10 in split 1 (the 5 seed labels are no query)."""
    rows = []
    for split, (queried, recall) in enumerate(((2, 0.4), (4, 0.8))):
        for labelled, accuracy in ((5, 0.80), (15, 0.90)):
            rows.append(
                {
                    "strategy": "margin",
                    "seed": 0,
                    "split": split,
                    "labelled": labelled,
                    "batch_size": 5 if labelled == 5 else 10,  # round 0: the seeds
                    "accuracy": accuracy + split * 0.05,
                    "macro_f1": accuracy - 0.1,
                    "recall_c": 0.0 if labelled == 5 else recall,
                    "queried_c": None if labelled == 5 else queried,
                }
            )
    table = efficiency_table(
        pd.DataFrame(rows), {0: 0.90, 1: 0.96}, rare="c", full_rare_recall={0: 0.4, 1: 0.9}
    ).iloc[0]
    assert table["runs"] == 2 and table["labels_to_within_1pt"] == 15
    assert table["reached_full"] == "1/2" and pd.isna(table["labels_to_full"])  # 0.95 < 0.96
    assert table["rare_share_mean"] == pytest.approx(0.3)
    curve = with_rare_share(pd.DataFrame(rows), "c")
    assert curve.loc[curve["labelled"] == 15, "rare_share"].tolist() == [0.2, 0.4]
    assert table["rare_recall_mean"] == pytest.approx(0.6)
    # t(0.975, 1) = 12.706; sd of (0.4, 0.8) = 0.2828; half-width = 12.706 * 0.2828 / sqrt 2
    assert table["rare_recall_ci"] == pytest.approx(2.541, rel=1e-3)
    assert table["reached_rare_recall"] == "1/2" and pd.isna(table["labels_to_rare_recall"])
    mean, half = interval([0.5])
    assert mean == 0.5 and math.isnan(half)
    panels = plot_panels(pd.DataFrame(rows), "c", 0.65, tmp_path / "panels.png")
    with Image.open(panels) as image:
        assert image.format == "PNG" and image.size == (1500, 450)


def full_data(**support: int) -> FullData:
    """A split's all-labels figures with ``support`` test items per class."""
    per_class = {name: ClassMetrics(0.5, 0.5, 0.5, n) for name, n in support.items()}
    metrics = Metrics(sum(support.values()), 0.9, 0.5, 0.5, 0.5, None, per_class, [], [])
    return FullData(0, 100, metrics)


def test_a_class_is_rare_only_under_half_its_even_share() -> None:
    """A simulation of balanced classes has no rare class (it once called the first class
    of two equal ones rare); the smallest of three under a sixth of the test items is one."""

    def rarest(*splits: FullData) -> str | None:
        return rarest_class(Simulation([], list(splits)))

    assert rarest(full_data(a=50, b=50)) is None
    assert rarest(full_data(a=30, b=50), full_data(a=30, b=50)) is None  # 37.5 % of 160
    assert rarest(full_data(a=20, b=100)) == "a"  # 16.7 % < 25 %
    assert rarest(full_data(a=40, b=40, c=15)) == "c"  # 15.8 % < 16.7 %
    assert rarest(full_data(a=40, b=40, c=17)) is None  # 17.5 %


def test_the_labels_to_the_rare_recall_are_compared_with_random(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Margin reaches the all-labels recall of 'c' at 20 labels, random at 30: 1.5 times
    fewer (the seed labels' model "reaches" it at once, which counts for no strategy). When
    random never gets there, the ratio is a lower bound and shows as one."""
    from al_pipeline import views

    def runs(random_recall: list[float]) -> pd.DataFrame:
        frame = margin_and_random(margin=[0.9] * 3, random=[0.9] * 3)
        return frame.assign(
            split=0,
            batch_size=10,
            recall_c=[0.7, 0.5, 0.6, *random_recall],
            queried_c=[float("nan"), 3.0, 3.0, float("nan"), 1.0, 1.0],
        )

    table = efficiency_table(runs([0.7, 0.2, 0.5]), 0.99, "c", {0: 0.5}).set_index("strategy")
    assert table.loc["margin", "labels_to_rare_recall"] == 20
    assert table.loc["margin", "ratio_rare_recall"] == pytest.approx(1.5)
    bound = efficiency_table(runs([0.7, 0.2, 0.3]), 0.99, "c", {0: 0.5})
    margin = bound.set_index("strategy").loc["margin"]
    assert pd.isna(margin["ratio_rare_recall"])
    assert margin["ratio_rare_recall_at_least"] == pytest.approx(1.5)
    result = SimulationResult(
        runs=pd.DataFrame(),
        table=bound,
        full_accuracy=0.99,
        full_labels=30,
        csv=tmp_path / "runs.csv",
        plot=tmp_path / "curves.png",
        table_csv=tmp_path / "table.csv",
        rare_class="c",
        full_rare_recall=0.5,
    )
    monkeypatch.setattr(views, "out", Console(width=400))
    views.simulated(result)
    shown = capsys.readouterr().out
    assert "labels to c recall" in shown and "≥ 1.5" in shown and "not reached" in shown
    assert re.search(r"│ +20 │", shown) and "20.000" not in shown  # label counts as counts
    wide = [line for line in shown.splitlines() if "margin" in line]
    # In 80 columns: one table per question, every cell whole, instead of one cut short.
    monkeypatch.setattr(views, "out", Console(width=80))
    views.simulated(result)
    narrow = capsys.readouterr().out
    assert all(len(line) <= 80 for line in narrow.splitlines()) and "…" not in narrow
    cells = [c.strip() for line in wide for c in line.split("│") if c.strip()]
    narrow_cells = [c.strip() for line in narrow.splitlines() for c in line.split("│")]
    assert len(wide) == 1 and set(cells) <= set(narrow_cells)


@pytest.mark.integration
def test_more_splits_are_refused_at_once_where_a_person_labelled(
    oracle_template: Path, tmp_path: Path, keras_home: Path
) -> None:
    config = copy_workspace(oracle_template, tmp_path / "ws", keras_home)
    with State(config.database) as state:
        item = next(iter(state.hidden_items()))
        state.record_pulled(None, [PulledLabel(item, "with_mask", "human", "ann")])
        plan = SimulationPlan(["margin"], 4, 4, 1, 1, TrainingSettings(epochs=1), splits=2)
        with pytest.raises(PipelineError, match="cannot be drawn again"):
            simulate(config, state, tmp_path / "out", plan)
    assert not (tmp_path / "out").exists()
