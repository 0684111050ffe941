"""[history] What each round bought: a table, files, a learning curve and an HTML report."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from al_pipeline.config import Config
from al_pipeline.errors import OutputError, PipelineError
from al_pipeline.images import load_rgb
from al_pipeline.paths import output_file, output_folder, write_atomically
from al_pipeline.state import State

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


def history_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One row per closed round; per-class counts and recalls become their own columns."""
    flat = []
    for row in rows:
        record = {key: row.get(key) for key in COLUMNS}
        record |= {f"labelled_{c}": n for c, n in row.get("labelled_per_class", {}).items()}
        record |= {f"recall_{c}": r for c, r in row.get("recall", {}).items()}
        record["model_version"] = row.get("model_version")
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


def plot_learning_curve(
    frame: pd.DataFrame, path: Path | None = None, group: str = "strategy"
) -> bytes:
    """Accuracy and macro-F1 against labelled count, one line per ``group``; PNG bytes
    (also written to ``path`` when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if frame.empty:
        raise PipelineError(
            "No closed rounds yet: nothing to plot. Run 'al run' or finish a round first."
        )
    if path is not None:
        output_file(path, "The plot file")
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    for name, part in frame.groupby(group, sort=True):
        part = part.sort_values("labelled")
        for axis, metric in zip(axes, ("accuracy", "macro_f1"), strict=True):
            axis.plot(part["labelled"], part[metric], marker="o", label=str(name))
    for axis, title in zip(axes, ("Accuracy", "Macro-F1"), strict=True):
        axis.set_xlabel("labelled items")
        axis.set_title(f"{title} on the held-out split")
        axis.grid(alpha=0.3)
        axis.legend(title=group)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    data = buffer.getvalue()
    if path is not None:
        write_atomically(path, lambda handle: handle.write(data), "the plot")
    return data


def write_report(config: Config, state: State, folder: Path) -> Path:
    """A self-contained HTML page (images inlined): history table, learning curves, the
    latest confusion matrix, and the images the last round selected."""
    output_folder(folder, "The report folder")
    frame = load_history(state)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the report folder {folder}: {exc.strerror}.") from exc
    parts = [f"<h1>al-pipeline report: {html.escape(config.name)}</h1>"]
    if frame.empty:
        parts.append("<p>No closed rounds yet.</p>")
    else:
        parts.append(
            "<h2>History</h2>"
            + frame.to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="", border=0)
        )
        curve = base64.b64encode(plot_learning_curve(frame)).decode()
        parts.append(
            f'<h2>Learning curves</h2><img alt="learning curves" '
            f'src="data:image/png;base64,{curve}">'
        )
    parts.append(_confusion_matrix(state))
    parts.append(_last_selection(config, state))
    text = _PAGE.format(title=html.escape(config.name), body="\n".join(parts))
    return write_atomically(
        folder / "report.html", lambda handle: handle.write(text.encode("utf-8")), "the report"
    )


def _confusion_matrix(state: State) -> str:
    latest = state.checkpoint()
    metrics = latest.meta.get("metrics") if latest else None
    if not metrics:
        return ""
    classes = metrics["classes"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in classes)
    body = "".join(
        f"<tr><th>{html.escape(c)}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
        for c, row in zip(classes, metrics["confusion_matrix"], strict=True)
    )
    return (
        f"<h2>Confusion matrix ({html.escape(latest.tag if latest else '')}; rows true, "
        f"columns predicted)</h2><table><tr><th></th>{head}</tr>{body}</table>"
    )


def _last_selection(config: Config, state: State, limit: int = 60) -> str:
    rounds = state.rounds()
    if not rounds:
        return ""
    last = rounds[-1]
    cells = []
    for item in state.queue(last.id)[:limit]:
        try:
            thumbnail = load_rgb(config.root / item.path)
        except (OSError, ValueError):
            continue
        thumbnail.thumbnail((128, 128))
        buffer = io.BytesIO()
        thumbnail.save(buffer, format="JPEG", quality=85)
        src = base64.b64encode(buffer.getvalue()).decode()
        guess = (
            f"{html.escape(item.predicted_class)} ({item.confidence:.2f})"
            if item.predicted_class and item.confidence is not None
            else "cold start"
        )
        cells.append(
            f'<figure><img alt="{html.escape(item.path.name)}" '
            f'src="data:image/jpeg;base64,{src}"><figcaption>{guess}</figcaption>'
            "</figure>"
        )
    return (
        f"<h2>Round {last.id}: the {len(cells)} images {html.escape(last.strategy)} "
        f"selected, with the model's guess</h2><div class=grid>{''.join(cells)}</div>"
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}: al-pipeline report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85rem; }}
td, th {{ border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: right; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 0.5rem; }}
figure {{ margin: 0; width: 128px; font-size: 0.75rem; text-align: center; }}
img {{ max-width: 100%; }}
</style></head><body>
{body}
</body></html>
"""
