"""[reporting] What each round bought: the history as a table, CSV / Parquet and a learning
curve."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from al_pipeline.errors import OutputError, PipelineError
from al_pipeline.paths import output_file, write_atomically
from al_pipeline.records import STARTING_POINT, HistoryRow
from al_pipeline.store.state import State

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLUMNS = (
    "round",
    "strategy",
    "batch_size",
    "labelled",
    "accuracy",
    "macro_f1",
    "roc_auc",
    "pool_change",
    "selection_seconds",
    "training_seconds",
    "checkpoint",
    "timestamp",
)


def history_frame(rows: Sequence[HistoryRow]) -> pd.DataFrame:
    """One row per closed round; per-class counts and recalls become their own columns."""
    flat = []
    for row in rows:
        record = {key: getattr(row, key) for key in COLUMNS}
        record |= {f"labelled_{c}": n for c, n in row.labelled_per_class.items()}
        record |= {f"recall_{c}": r for c, r in row.recall.items()}
        record["model_version"] = row.model_version
        flat.append(record)
    return pd.DataFrame(flat, columns=None if flat else list(COLUMNS))


def load_history(state: State) -> pd.DataFrame:
    return history_frame(state.history())


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """Write CSV or Parquet, chosen by the file's extension."""
    output_file(path, "The table file")
    if path.suffix.lower() == ".parquet":
        return write_atomically(path, lambda handle: frame.to_parquet(handle, index=False))
    return write_atomically(path, lambda handle: frame.to_csv(handle, index=False))


def export_history(
    rows: Sequence[HistoryRow], csv_file: Path | None, parquet: Path | None, plot: Path | None
) -> list[Path]:
    """Write the history as CSV, Parquet and a learning curve, as named; the files written."""
    if csv_file is None and parquet is None and plot is None:
        return []
    frame = history_frame(rows)
    written = [write_table(frame, path) for path in (csv_file, parquet) if path is not None]
    if plot is not None:
        plot_learning_curve(frame, plot)
        written.append(plot)
    return written


def plot_learning_curve(
    frame: pd.DataFrame, path: Path | None = None, group: str = "strategy"
) -> bytes:
    """Accuracy and macro-F1 against labelled count, one line per ``group``; PNG bytes
    (also written to ``path`` when given). The starting point (round 0) begins every line,
    so the first round's gain or loss shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    if frame.empty:
        raise PipelineError(
            "No closed rounds yet: nothing to plot. Run 'al run' or finish a round first."
        )
    if path is not None:
        kind = plot_format(path)
        output_file(path, "The plot file")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    for name, part in _lines(frame, group):
        part = part.sort_values("labelled")
        for axis, metric in zip(axes, ("accuracy", "macro_f1"), strict=True):
            axis.plot(part["labelled"], part[metric], marker="o", label=str(name))
    for axis, title in zip(axes, ("Accuracy", "Macro-F1"), strict=True):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.set_xlabel("labelled items")
        axis.set_title(f"{title} on the held-out split")
        axis.grid(alpha=0.3)
        axis.legend(title=group)
    figure.tight_layout()
    data = _saved(figure, "png")
    if path is not None:
        wanted = data if kind == "png" else _saved(figure, kind)
        write_atomically(path, lambda handle: handle.write(wanted), "the plot")
    plt.close(figure)
    return data


PLOT_FORMATS = ("png", "svg", "pdf")


def plot_format(path: Path) -> str:
    """The format a plot file's name asks for; any other name is refused, not written as
    a PNG under the wrong name."""
    kind = path.suffix.lower().removeprefix(".")
    if kind not in PLOT_FORMATS:
        raise OutputError(
            f"The plot file {path}: name it .png, .svg or .pdf (the format follows the name)."
        )
    return kind


def _saved(figure: Figure, kind: str) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format=kind)
    return buffer.getvalue()


def _lines(frame: pd.DataFrame, group: str) -> list[tuple[str, pd.DataFrame]]:
    """One frame per line: each group, with the starting point (round 0) in front."""
    start = frame[frame[group] == STARTING_POINT] if group == "strategy" else frame.iloc[:0]
    rest = frame.drop(start.index)
    if rest.empty:
        return [(STARTING_POINT, start)]
    return [(str(name), pd.concat([start, part])) for name, part in rest.groupby(group, sort=True)]
