"""[reporting] A simulation's runs as a table, the labels each strategy needed, and the
learning curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from al_pipeline.config import Config
from al_pipeline.loop.simulate import Simulation, SimulationPlan, simulate
from al_pipeline.progress import Progress, silent
from al_pipeline.reporting.history import history_frame
from al_pipeline.store.state import State


@dataclass
class SimulationResult:
    """Where the simulation wrote its files, and its summary."""

    runs: pd.DataFrame
    table: pd.DataFrame
    full_accuracy: float
    full_labels: int
    csv: Path
    plot: Path
    table_csv: Path
    panels: Path | None = None
    splits: int = 1
    rare_class: str | None = None
    full_rare_recall: float | None = None


def simulate_and_report(
    config: Config, state: State, out: Path, plan: SimulationPlan, progress: Progress = silent
) -> SimulationResult:
    """Run the simulation (:func:`al_pipeline.loop.simulate.simulate`) and write the runs,
    the efficiency table and the curves under ``out``."""
    simulation = simulate(config, state, out, plan, progress)
    runs = runs_frame(simulation)
    rare = rarest_class(simulation)
    full = {f.split: f.metrics.accuracy for f in simulation.full}
    full_rare = _full_recall(simulation, rare)
    rare_recall = None if full_rare is None else float(np.mean(list(full_rare.values())))
    table = efficiency_table(runs, full, rare, full_rare)
    csv, table_csv = out / "simulation.csv", out / "efficiency.csv"
    plot = out / "learning_curves.png"
    runs.to_csv(csv, index=False)
    table.to_csv(table_csv, index=False)
    plot_runs(runs, simulation.full_accuracy, plot)
    panels = None
    if rare is not None and rare_recall is not None:
        panels = plot_panels(runs, rare, rare_recall, out / "rare_class_curves.png")
    return SimulationResult(
        runs,
        table,
        simulation.full_accuracy,
        simulation.full_labels,
        csv,
        plot,
        table_csv,
        panels,
        plan.splits,
        rare,
        rare_recall,
    )


def runs_frame(simulation: Simulation) -> pd.DataFrame:
    """Every run's history rows, with the run's strategy, seed and split, and per round
    how many items of each class that round queried (``queried_<class>``)."""
    frames = []
    for run in simulation.runs:
        frame = history_frame(run.rows)
        frame["strategy"] = run.strategy
        frame.insert(2, "seed", run.seed)
        frame.insert(3, "split", run.split)
        labelled = frame.filter(like="labelled_").fillna(0)
        queried = labelled.diff()
        for column in labelled.columns:
            frame[column.replace("labelled_", "queried_", 1)] = queried[column]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def rarest_class(simulation: Simulation) -> str | None:
    """The class with the fewest test items, summed over the splits, if it is rare: under
    half its even share (``1 / 2K`` of K classes, the bar the ``auto`` strategy uses). On
    balanced classes there is none, and no rare-class columns or curves are reported."""
    support: dict[str, int] = {}
    for full in simulation.full:
        for name, metrics in full.metrics.per_class.items():
            support[name] = support.get(name, 0) + metrics.support
    rarest = min(support, key=lambda name: support[name])
    total = sum(support.values())
    return rarest if support[rarest] * 2 * len(support) < total else None


def _full_recall(simulation: Simulation, rare: str | None) -> dict[int, float] | None:
    """Each split's all-labels recall of ``rare`` (None without a rare class)."""
    if rare is None:
        return None
    return {f.split: f.metrics.per_class[rare].recall for f in simulation.full}


def interval(values: Sequence[float] | pd.Series) -> tuple[float, float]:
    """Mean and the half-width of its 95 % t-interval (NaN for a single value)."""
    data = np.asarray(pd.Series(values).dropna(), np.float64)
    if len(data) == 0:
        return float("nan"), float("nan")
    if len(data) == 1:
        return float(data[0]), float("nan")
    half = stats.t.ppf(0.975, len(data) - 1) * data.std(ddof=1) / np.sqrt(len(data))
    return float(data.mean()), float(half)


def efficiency_table(
    runs: pd.DataFrame,
    full_accuracy: float | Mapping[int, float],
    rare: str | None = None,
    full_rare_recall: Mapping[int, float] | None = None,
) -> pd.DataFrame:
    """Per strategy, over seeds and splits: median labels to reach the all-labels
    accuracy - 1 point, and to reach it (each run against its own split's reference);
    the final accuracy and macro-F1 as mean ± 95 % interval; and, with ``rare``, the rare
    class's final recall, its share of the queried items, and the labels each run needed to
    reach the all-labels recall of it."""
    runs = runs if "split" in runs else runs.assign(split=0)
    targets = _per_split(full_accuracy, runs)
    rows: list[dict[str, Any]] = []
    for strategy, part in runs.groupby("strategy", sort=True):
        groups = [g for _, g in part.groupby(["split", "seed"])]
        row: dict[str, Any] = {"strategy": strategy, "seeds": part["seed"].nunique()}
        row["runs"] = len(groups)
        for key, drop in (("within_1pt", 0.01), ("full", 0.0)):
            needed = [labels_to_reach(g, targets[g["split"].iloc[0]] - drop) for g in groups]
            row[f"labels_to_{key}"], row[f"reached_{key}"] = _median_if_all(needed)
        last = pd.concat([g.sort_values("labelled").tail(1) for g in groups])
        row["final_labels"] = int(last["labelled"].median())
        row["final_accuracy"] = float(last["accuracy"].median())
        for metric in (m for m in ("accuracy", "macro_f1") if m in last):
            row[f"final_{metric}_mean"], row[f"final_{metric}_ci"] = interval(last[metric])
        if rare is not None:
            row |= _rare_columns(groups, last, rare, full_rare_recall)
        rows.append(row)
    return _with_ratios(pd.DataFrame(rows))


def _rare_columns(
    groups: list[pd.DataFrame],
    last: pd.DataFrame,
    rare: str,
    full_rare_recall: Mapping[int, float] | None,
) -> dict[str, Any]:
    queried = [g[f"queried_{rare}"].sum() / max(_asked(g, rare).sum(), 1) for g in groups]
    row: dict[str, Any] = {}
    row["rare_recall_mean"], row["rare_recall_ci"] = interval(last[f"recall_{rare}"])
    row["rare_share_mean"], row["rare_share_ci"] = interval(queried)
    if full_rare_recall is not None:
        # Only rounds a strategy queried count: the seed labels' model, with the rare class
        # as a third of its labels, calls many items rare and often "reaches" its recall.
        needed = [
            labels_to_reach(
                g[_queried_rounds(g, rare)],
                full_rare_recall[g["split"].iloc[0]],
                f"recall_{rare}",
            )
            for g in groups
        ]
        row["labels_to_rare_recall"], row["reached_rare_recall"] = _median_if_all(needed)
    return row


def _median_if_all(needed: list[int | None]) -> tuple[float | None, str]:
    """The median labels the runs needed (None unless every run got there), and "k/n"."""
    reached = [n for n in needed if n is not None]
    median = float(np.median(reached)) if len(reached) == len(needed) else None
    return median, f"{len(reached)}/{len(needed)}"


def with_rare_share(runs: pd.DataFrame, rare: str) -> pd.DataFrame:
    """``runs`` by labels, with ``rare_share``: the rare class's share of all the items each
    run has queried so far (seed labels excluded)."""
    frame = runs.sort_values("labelled").copy()
    frame["asked"] = _asked(frame, rare)
    by_run = frame.groupby(["strategy", "seed", "split"])
    frame["rare_share"] = by_run[f"queried_{rare}"].cumsum() / by_run["asked"].cumsum()
    return frame.drop(columns="asked")


def _asked(frame: pd.DataFrame, rare: str) -> pd.Series:
    """Each row's batch if it was a queried round, else 0: round 0's batch is the seed
    labels, which no strategy chose (counting them understated the share by 9 in 409)."""
    return frame["batch_size"].where(_queried_rounds(frame, rare), 0)


def _queried_rounds(frame: pd.DataFrame, rare: str) -> pd.Series:
    """Which rows are rounds a strategy queried (round 0, the seed labels, has no counts)."""
    return frame[f"queried_{rare}"].notna()


def _per_split(value: float | Mapping[int, float], runs: pd.DataFrame) -> dict[int, float]:
    if isinstance(value, Mapping):
        return {int(k): float(v) for k, v in value.items()}
    return {int(split): float(value) for split in runs["split"].unique()}


def _with_ratios(table: pd.DataFrame) -> pd.DataFrame:
    """How many times fewer labels than random each strategy needed to reach each target
    (accuracy within 1 point, full accuracy, and the rare class's all-labels recall)."""
    random_row = table[table["strategy"] == "random"]
    keys = ("within_1pt", "full", "rare_recall")
    for key in (k for k in keys if f"labels_to_{k}" in table):
        base = random_row[f"labels_to_{key}"].iloc[0] if len(random_row) else None
        random_final = random_row["final_labels"].iloc[0] if len(random_row) else None
        ratios, bounds = [], []
        for value in table[f"labels_to_{key}"]:
            hit = value is not None and not pd.isna(value)
            random_reached = base is not None and not pd.isna(base)
            ratios.append(base / value if hit and random_reached else None)
            # Random never got there within the run: its label count is a lower bound.
            bounds.append(
                random_final / value
                if hit and random_final is not None and not random_reached
                else None
            )
        table[f"ratio_{key}"] = ratios
        table[f"ratio_{key}_at_least"] = bounds
    return table


def labels_to_reach(part: pd.DataFrame, target: float, metric: str = "accuracy") -> int | None:
    """The fewest labels among ``part``'s rows at which ``metric`` reaches ``target``."""
    hit = part.sort_values("labelled")
    hit = hit[hit[metric] >= target - 1e-9]
    return None if hit.empty else int(hit["labelled"].iloc[0])


def _bands(axis: Any, runs: pd.DataFrame, metric: str) -> None:
    """Per strategy: the mean over runs (line) and its 95 % interval (band)."""
    for strategy, part in runs.groupby("strategy", sort=True):
        points = [(n, *interval(g[metric])) for n, g in part.groupby("labelled")]
        labelled, mean, half = (
            np.array(column, np.float64) for column in zip(*points, strict=True)
        )
        axis.plot(labelled, mean, marker=".", label=str(strategy))
        if np.isfinite(half).any():
            axis.fill_between(labelled, mean - half, mean + half, alpha=0.15)


def plot_runs(
    runs: pd.DataFrame, full_accuracy: float, path: Path, metric: str = "accuracy"
) -> Path:
    """Mean (line) and 95 % interval over seeds and splits (band) per strategy against
    labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5), dpi=100)
    _bands(axis, runs, metric)
    axis.axhline(full_accuracy, color="grey", linestyle="--", label="all labels")
    axis.axhline(full_accuracy - 0.01, color="grey", linestyle=":", label="all labels - 1 pt")
    axis.set_xlabel("labelled items")
    axis.set_ylabel(f"held-out {metric}")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_panels(runs: pd.DataFrame, rare: str, full_rare_recall: float, path: Path) -> Path:
    """Against labels: macro-F1, the rare class's recall, and its share of all the items
    queried so far (seed labels excluded); mean and 95 % interval per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frame = with_rare_share(runs, rare)
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5), dpi=100)
    for axis, metric, title in (
        (axes[0], "macro_f1", "held-out macro-F1"),
        (axes[1], f"recall_{rare}", f"held-out recall of {rare}"),
        (axes[2], "rare_share", f"share of {rare} among queried items"),
    ):
        _bands(axis, frame, metric)
        axis.set_xlabel("labelled items")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[1].axhline(full_rare_recall, color="grey", linestyle="--", label="all labels")
    axes[0].legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
