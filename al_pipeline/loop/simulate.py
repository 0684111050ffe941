"""[loop] Label-efficiency simulation: strategies against random, with the oracle, over
seeds.

Each run copies the base workspace's database (the embedding cache is shared, so no
backbone work is repeated), reveals ``initial`` seed labels, trains, and runs rounds with
the oracle through the round driver (:func:`al_pipeline.loop.rounds.run`). A reference
model trained on every hidden label gives the full-data accuracy. The runs come back as
history rows; :mod:`al_pipeline.reporting.simulation` turns them into the efficiency
table, the CSV and the curves.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from al_pipeline.config import Config
from al_pipeline.errors import PipelineError
from al_pipeline.labelling import OracleLabeller
from al_pipeline.loop.rounds import RunPlan, run, train_and_evaluate
from al_pipeline.model.network import TrainingSettings
from al_pipeline.paths import at_least, output_folder
from al_pipeline.progress import Progress, silent
from al_pipeline.records import HistoryRow
from al_pipeline.selection.strategies import even_shares, parse_strategy
from al_pipeline.store.labels import PulledLabel
from al_pipeline.store.state import State, open_state


@dataclass(frozen=True)
class SimulationRun:
    """One strategy from one seed: its history, round 0 (the seed labels' model) first."""

    strategy: str
    seed: int
    rows: list[HistoryRow]


@dataclass(frozen=True)
class Simulation:
    """Every run, and what a model trained on all the hidden labels reaches."""

    runs: list[SimulationRun]
    full_accuracy: float
    full_labels: int


@dataclass(frozen=True)
class SimulationPlan:
    """Every strategy runs from ``initial`` seed labels for ``rounds`` rounds of ``size``,
    ``seeds`` times. A strategy name ending in ``+balance`` (``margin+balance``) selects
    class-balanced batches, so it can be compared with the plain strategy in one run."""

    strategies: Sequence[str]
    initial: int
    size: int
    rounds: int
    seeds: int
    settings: TrainingSettings


def simulate(
    config: Config, state: State, out: Path, plan: SimulationPlan, progress: Progress = silent
) -> Simulation:
    """Run the plan on the workspace's hidden labels, each run in a workspace of its own
    under ``out``."""
    strategies, initial, size = plan.strategies, plan.initial, plan.size
    rounds, seeds, settings = plan.rounds, plan.seeds, plan.settings
    output_folder(out, "--out")
    for name in strategies:
        parse_strategy(name)
    for flag, value in (("--size", size), ("--rounds", rounds), ("--seeds", seeds)):
        at_least(value, 1, flag)
    if initial < len(config.classes):
        raise PipelineError(
            f"--initial {initial} is too few: every class needs a seed label, so use at least "
            f"{len(config.classes)}."
        )
    hidden = state.hidden_items()
    if len(hidden) < initial + size:
        raise PipelineError(
            f"The workspace has {len(hidden)} items with hidden labels; a simulation needs "
            "more than --initial + --size. Add labelled data with 'al pool add DIR --labelled "
            "--oracle --test-fraction 0.2' (or pass --dataset DIR)."
        )
    if not state.labelled_items("test"):
        raise PipelineError(
            "The workspace has no test split to measure accuracy on. Add "
            "labelled data with --test-fraction."
        )
    out.mkdir(parents=True, exist_ok=True)
    full = _full_data_accuracy(config, state, out / "full-data", hidden, settings, progress)
    runs = []
    for seed in range(seeds):
        for name in strategies:
            progress(f"Simulating {name}, seed {seed}", 0, rounds)
            runs.append(
                _one_run(
                    config,
                    state,
                    out / f"{name.replace('+', '-')}-seed{seed}",
                    hidden,
                    name,
                    seed,
                    initial,
                    size,
                    rounds,
                    settings,
                )
            )
            progress(f"Simulating {name}, seed {seed}", rounds, rounds)
    return Simulation(runs, full, len(hidden))


def _run_config(config: Config, state: State, folder: Path, seed: int) -> tuple[Config, State]:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    state.backup(folder / "state.sqlite3")
    run_config = replace(
        config, database=folder / "state.sqlite3", checkpoints_dir=folder / "checkpoints", seed=seed
    )
    return run_config, open_state(run_config.database)


def _full_data_accuracy(
    config: Config,
    state: State,
    folder: Path,
    hidden: dict[int, str],
    settings: TrainingSettings,
    progress: Progress,
) -> float:
    run_config, run_state = _run_config(config, state, folder, config.seed)
    with run_state:
        _reveal(run_state, hidden, list(hidden))
        report = train_and_evaluate(
            run_config, run_state, settings, tag="full-data", progress=progress
        )
    assert report.metrics is not None
    return report.metrics.accuracy


def _reveal(state: State, hidden: dict[int, str], item_ids: Sequence[int]) -> None:
    state.record_pulled(None, [PulledLabel(i, hidden[i], "oracle", "oracle") for i in item_ids])


def _seed_items(hidden: dict[int, str], initial: int, rng: np.random.Generator) -> list[int]:
    """``initial`` items spread evenly over the classes (as a person would pick seeds)."""
    by_class: dict[str, list[int]] = {}
    for item_id, label in hidden.items():
        by_class.setdefault(label, []).append(item_id)
    classes = sorted(by_class)
    chosen: list[int] = []
    for label, quota in zip(classes, even_shares(initial, len(classes)), strict=True):
        members = by_class[label]
        chosen += rng.choice(members, size=min(quota, len(members)), replace=False).tolist()
    return chosen


def _one_run(
    config: Config,
    state: State,
    folder: Path,
    hidden: dict[int, str],
    strategy: str,
    seed: int,
    initial: int,
    size: int,
    rounds: int,
    settings: TrainingSettings,
) -> SimulationRun:
    run_config, run_state = _run_config(config, state, folder, seed)
    seeded = replace(settings, seed=seed)
    base, balance = parse_strategy(strategy)
    with run_state:
        _reveal(run_state, hidden, _seed_items(hidden, initial, np.random.default_rng(seed)))
        train_and_evaluate(run_config, run_state, seeded, tag=f"seed-labels-{seed}")
        plan = RunPlan(rounds, base, size, balance)
        run(run_config, run_state, OracleLabeller(run_state), seeded, plan)
        return SimulationRun(strategy, seed, run_state.history())


def dataset_workspace(
    dataset: Path, out: Path, classes: str | None, test_fraction: float, progress: Progress = silent
) -> Config:
    """A workspace under ``out`` for a labelled folder: labels hidden for the oracle, a
    grouped test split visible. Re-running reuses it (ingestion skips what it has)."""
    from al_pipeline.config import CONFIG_FILE, load_config, resolve_config
    from al_pipeline.ingest.folders import add_folder
    from al_pipeline.store.workspace import init_workspace

    if not dataset.is_dir():
        raise PipelineError(f"--dataset '{dataset}' is not a folder of class subfolders.")
    output_folder(out, "--out")
    root = out / "workspace"
    if (root / CONFIG_FILE).is_file():
        config = load_config(root)
    else:
        names = classes or ",".join(
            sorted(p.name for p in dataset.iterdir() if p.is_dir() and not p.name.startswith("."))
        )
        config = init_workspace(root, names, f"simulation of {dataset.name}").config
    with open_state(config.database) as state:
        add_folder(
            config,
            state,
            dataset,
            labelled=True,
            oracle=True,
            test_fraction=test_fraction,
            progress=progress,
        )
    return resolve_config(config.root)  # with the environment's settings, as any workspace
