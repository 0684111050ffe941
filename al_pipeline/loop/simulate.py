"""[loop] Label-efficiency simulation: strategies against random, with the oracle, over
seeds.

Each run copies the workspace's database as it was before its first round (rounds, and
the labels they revealed, forgotten; the embedding cache is shared, so no backbone work is
repeated), reveals ``initial`` seed labels, trains, and runs rounds with
the oracle through the round driver (:func:`al_pipeline.loop.rounds.run`). A reference
model trained on every hidden label gives the full-data accuracy. The runs come back as
history rows; :mod:`al_pipeline.reporting.simulation` turns them into the efficiency
table, the CSV and the curves.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from al_pipeline.config import Config
from al_pipeline.errors import PipelineError
from al_pipeline.ingest.split import redraw_test_split
from al_pipeline.labelling import OracleLabeller
from al_pipeline.loop.rounds import RunPlan, run, train_and_evaluate
from al_pipeline.model.network import TrainingSettings
from al_pipeline.paths import at_least, output_folder
from al_pipeline.progress import Progress, silent
from al_pipeline.records import HistoryRow, Metrics
from al_pipeline.selection.strategies import even_shares, parse_strategy
from al_pipeline.store.labels import PulledLabel
from al_pipeline.store.state import State, open_state

BASE_FILE = "base.sqlite3"  # the state every run of a split copies


@dataclass(frozen=True)
class SimulationRun:
    """One strategy from one seed on one test split: its history, round 0 (the seed
    labels' model) first."""

    strategy: str
    seed: int
    rows: list[HistoryRow]
    split: int = 0


@dataclass(frozen=True)
class FullData:
    """What a model trained on every hidden label of one split reaches on its test side."""

    split: int
    labels: int
    metrics: Metrics


@dataclass(frozen=True)
class Simulation:
    """Every run, and the all-labels reference of each split."""

    runs: list[SimulationRun]
    full: list[FullData]

    @property
    def full_accuracy(self) -> float:
        """The all-labels accuracy, as a mean over splits."""
        return float(np.mean([f.metrics.accuracy for f in self.full]))

    @property
    def full_labels(self) -> int:
        return self.full[0].labels


@dataclass(frozen=True)
class SimulationPlan:
    """Every strategy runs from ``initial`` seed labels for ``rounds`` rounds of ``size``,
    ``seeds`` times on each of ``splits`` test splits. A strategy name ending in
    ``+balance`` (``margin+balance``) selects class-balanced batches, so it can be compared
    with the plain strategy in one run.

    Split 0 is the workspace's own; each further split is drawn again with another seed,
    photo-grouped as the first (:func:`al_pipeline.ingest.split.redraw_test_split`), so a
    result is not one split's luck. ``image_size`` overrides the workspace's input size.
    """

    strategies: Sequence[str]
    initial: int
    size: int
    rounds: int
    seeds: int
    settings: TrainingSettings
    splits: int = 1
    image_size: int | None = None


def simulate(
    config: Config, state: State, out: Path, plan: SimulationPlan, progress: Progress = silent
) -> Simulation:
    """Run the plan on the workspace's hidden labels, each run in a workspace of its own
    under ``out`` (under ``out/splitK`` for split K > 0). A relative ``out`` is taken from
    the current folder, like any path a person names, not from the workspace."""
    out = out.absolute()  # a run's config would resolve it against the workspace root
    check_plan(config, out, plan)
    if plan.image_size is not None:
        config = replace(config, image_size=plan.image_size)
    runs: list[SimulationRun] = []
    full: list[FullData] = []
    with _replay_base(state, out, functools.partial(_check_data, config, plan=plan)) as base:
        for index in range(plan.splits):
            folder = out if index == 0 else out / f"split{index}"
            with _split_state(config, base, folder, index) as split_state:
                split = _Split(index, split_state, folder, split_state.hidden_items())
                full.append(_full_data(config, split, plan, progress))
                runs += _split_runs(config, split, plan, progress)
    return Simulation(runs, full)


@dataclass(frozen=True)
class _Split:
    """One test split's base state (the runs copy it), its folder and its hidden labels."""

    index: int
    state: State
    folder: Path
    hidden: dict[int, str]


def check_plan(config: Config, out: Path, plan: SimulationPlan) -> None:
    """Refuse flags the workspace cannot run, before anything is written."""
    from al_pipeline.model.backbones import backbone_spec, check_image_size

    output_folder(out, "--out")
    for name in plan.strategies:
        parse_strategy(name)
    for flag, value in (
        ("--size", plan.size),
        ("--rounds", plan.rounds),
        ("--seeds", plan.seeds),
        ("--splits", plan.splits),
    ):
        at_least(value, 1, flag)
    if plan.image_size is not None:
        check_image_size(backbone_spec(config.backbone), plan.image_size)
    if plan.initial < len(config.classes):
        raise PipelineError(
            f"--initial {plan.initial} is too few: every class needs a seed label, so use at "
            f"least {len(config.classes)}."
        )


def _check_data(config: Config, state: State, plan: SimulationPlan) -> None:
    """What the workspace must hold, read in the copy the runs start from."""
    if plan.splits > 1:
        state.check_redrawable()
    hidden = len(state.hidden_items())
    if hidden < plan.initial + plan.size:
        raise PipelineError(
            f"The workspace has {hidden} items with hidden labels; a "
            "simulation needs more than --initial + --size. Add labelled data with 'al pool "
            "add DIR --labelled --oracle --test-fraction 0.2' (or pass --dataset DIR)."
        )
    if not state.labelled_items("test"):
        raise PipelineError(
            "The workspace has no test split to measure accuracy on. Add "
            "labelled data with --test-fraction."
        )


@contextmanager
def _replay_base(state: State, out: Path, check: Callable[[State], None]) -> Iterator[State]:
    """A copy of the workspace as it was before its first round, which every run starts
    from: a simulation replays labelling from its seed labels, even after 'al run' has
    revealed some (those runs would start from them, and carry the workspace's history).
    When ``check`` refuses it, the copy goes again, with ``out`` if this made it."""
    made = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    path = out / BASE_FILE
    base = _copy(state, path)
    try:
        base.forget_rounds()
        check(base)
    except BaseException:
        base.close()
        path.unlink(missing_ok=True)
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise
    with base:
        yield base


@contextmanager
def _split_state(config: Config, state: State, folder: Path, split: int) -> Iterator[State]:
    """The base state for split 0; for another, a copy with the split drawn again."""
    if split == 0:
        yield state
        return
    folder.mkdir(parents=True, exist_ok=True)
    with _copy(state, folder / BASE_FILE) as copy:
        redraw_test_split(config, copy, seed=config.seed + split)
        yield copy


def _split_runs(
    config: Config, split: _Split, plan: SimulationPlan, progress: Progress
) -> list[SimulationRun]:
    runs = []
    for seed in range(plan.seeds):
        for name in plan.strategies:
            where = f", split {split.index}" if split.index else ""
            what = f"Simulating {name}, seed {seed}{where}"
            progress(what, 0, plan.rounds)
            runs.append(_one_run(config, split, name, seed, plan))
            progress(what, plan.rounds, plan.rounds)
    return runs


def _copy(state: State, path: Path) -> State:
    """A consistent copy of ``state`` at ``path`` (replacing any file there), opened."""
    path.unlink(missing_ok=True)
    state.backup(path)
    return open_state(path)


def _run_config(config: Config, state: State, folder: Path, seed: int) -> tuple[Config, State]:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    run_config = replace(
        config, database=folder / "state.sqlite3", checkpoints_dir=folder / "checkpoints", seed=seed
    )
    return run_config, _copy(state, run_config.database)


def _full_data(config: Config, split: _Split, plan: SimulationPlan, progress: Progress) -> FullData:
    folder = split.folder / "full-data"
    run_config, run_state = _run_config(config, split.state, folder, config.seed)
    with run_state:
        _reveal(run_state, split.hidden, list(split.hidden))
        report = train_and_evaluate(
            run_config, run_state, plan.settings, tag="full-data", progress=progress
        )
    assert report.metrics is not None
    return FullData(split.index, len(split.hidden), report.metrics)


def _reveal(state: State, hidden: dict[int, str], item_ids: Sequence[int]) -> None:
    state.record_pulled(None, [PulledLabel(i, hidden[i], "oracle", "oracle") for i in item_ids])


def _hold_back_unknown(state: State) -> None:
    """A run's copy replays the items with hidden labels only: photos added without one
    (a pool to label for real) would stop the oracle's rounds."""
    unknown = OracleLabeller(state).unknown(state.selectable().ids)
    state.hold_back(unknown.tolist(), "simulation")


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
    config: Config, split: _Split, strategy: str, seed: int, plan: SimulationPlan
) -> SimulationRun:
    folder = split.folder / f"{strategy.replace('+', '-')}-seed{seed}"
    run_config, run_state = _run_config(config, split.state, folder, seed)
    seeded = replace(plan.settings, seed=seed)
    base, balance = parse_strategy(strategy)
    rng = np.random.default_rng(seed if split.index == 0 else [seed, split.index])
    with run_state:
        _hold_back_unknown(run_state)
        _reveal(run_state, split.hidden, _seed_items(split.hidden, plan.initial, rng))
        train_and_evaluate(run_config, run_state, seeded, tag=f"seed-labels-{seed}")
        run_plan = RunPlan(plan.rounds, base, plan.size, balance)
        run(run_config, run_state, OracleLabeller(run_state), seeded, run_plan)
        return SimulationRun(strategy, seed, run_state.history(), split.index)


def dataset_workspace(
    dataset: Path,
    out: Path,
    classes: str | None,
    test_fraction: float,
    progress: Progress = silent,
    check: Callable[[Config], None] | None = None,
    **overrides: Any,
) -> Config:
    """A workspace under ``out`` for a labelled folder: labels hidden for the oracle, a
    grouped test split visible. Re-running reuses it (ingestion skips what it has).
    ``check`` is given the workspace's config before anything is written (the simulation's
    flags, say); ``overrides`` are flag values for its config, as for any workspace."""
    from al_pipeline.config import resolve_config
    from al_pipeline.ingest.folders import add_folder, check_test_fraction
    from al_pipeline.store.workspace import init_workspace

    if not dataset.is_dir():
        raise PipelineError(f"--dataset '{dataset}' is not a folder of class subfolders.")
    output_folder(out, "--out")
    check_test_fraction(test_fraction)
    config, existing = _dataset_config(dataset, out / "workspace", classes)
    if check is not None:
        check(config)
    if not existing:
        config = init_workspace(config.root, ",".join(config.classes), config.name).config
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
    # With the environment's settings and the flags, as any workspace.
    return resolve_config(config.root, **overrides)


def _dataset_config(dataset: Path, root: Path, classes: str | None) -> tuple[Config, bool]:
    """The config of a dataset's workspace at ``root``, and whether it is there yet (a new
    one's classes are ``classes``, else the dataset's subfolders)."""
    from al_pipeline.config import CONFIG_FILE, load_config, new_config, parse_classes

    if (root / CONFIG_FILE).is_file():
        return load_config(root), True
    names = classes or ",".join(
        sorted(p.name for p in dataset.iterdir() if p.is_dir() and not p.name.startswith("."))
    )
    return new_config(root, parse_classes(names), f"simulation of {dataset.name}"), False
