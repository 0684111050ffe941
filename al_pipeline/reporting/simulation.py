"""[reporting] A simulation's runs as a table, the labels each strategy needed, and the
learning curves."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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


def simulate_and_report(
    config: Config, state: State, out: Path, plan: SimulationPlan, progress: Progress = silent
) -> SimulationResult:
    """Run the simulation (:func:`al_pipeline.loop.simulate.simulate`) and write the runs,
    the efficiency table and the curves under ``out``."""
    simulation = simulate(config, state, out, plan, progress)
    runs = runs_frame(simulation)
    table = efficiency_table(runs, simulation.full_accuracy)
    csv, table_csv, plot = (
        out / "simulation.csv",
        out / "efficiency.csv",
        out / "learning_curves.png",
    )
    runs.to_csv(csv, index=False)
    table.to_csv(table_csv, index=False)
    plot_runs(runs, simulation.full_accuracy, plot)
    return SimulationResult(
        runs, table, simulation.full_accuracy, simulation.full_labels, csv, plot, table_csv
    )


def runs_frame(simulation: Simulation) -> pd.DataFrame:
    """Every run's history rows, with the run's strategy and seed."""
    frames = []
    for run in simulation.runs:
        frame = history_frame(run.rows)
        frame["strategy"] = run.strategy
        frame.insert(2, "seed", run.seed)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def efficiency_table(runs: pd.DataFrame, full_accuracy: float) -> pd.DataFrame:
    """Median labels (over seeds) to reach full-data accuracy - 1 point, and to reach it."""
    rows: list[dict[str, Any]] = []
    for strategy, part in runs.groupby("strategy", sort=True):
        row: dict[str, Any] = {"strategy": strategy, "seeds": part["seed"].nunique()}
        for key, target in (("within_1pt", full_accuracy - 0.01), ("full", full_accuracy)):
            needed = [_labels_to_reach(seed_part, target) for _, seed_part in part.groupby("seed")]
            reached = [n for n in needed if n is not None]
            row[f"labels_to_{key}"] = (
                float(np.median(reached)) if len(reached) == len(needed) else None
            )
            row[f"reached_{key}"] = f"{len(reached)}/{len(needed)}"
        last = part.sort_values("labelled").groupby("seed").tail(1)
        row["final_labels"] = int(last["labelled"].median())
        row["final_accuracy"] = float(last["accuracy"].median())
        rows.append(row)
    table = pd.DataFrame(rows)
    random_row = table[table["strategy"] == "random"]
    for key in ("within_1pt", "full"):
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


def _labels_to_reach(part: pd.DataFrame, target: float) -> int | None:
    hit = part.sort_values("labelled")
    hit = hit[hit["accuracy"] >= target - 1e-9]
    return None if hit.empty else int(hit["labelled"].iloc[0])


def plot_runs(
    runs: pd.DataFrame, full_accuracy: float, path: Path, metric: str = "accuracy"
) -> Path:
    """Mean (line) and min to max over seeds (band) per strategy against labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5), dpi=100)
    for strategy, part in runs.groupby("strategy", sort=True):
        stats = part.groupby("labelled")[metric].agg(["mean", "min", "max"]).reset_index()
        axis.plot(stats["labelled"], stats["mean"], marker=".", label=str(strategy))
        axis.fill_between(stats["labelled"], stats["min"], stats["max"], alpha=0.15)
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
