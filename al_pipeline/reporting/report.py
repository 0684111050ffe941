"""[reporting] The HTML report: one self-contained page (images inlined) with the history
table, the learning curves, the latest confusion matrix and the last round's picks."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from al_pipeline.config import Config
from al_pipeline.errors import OutputError
from al_pipeline.ingest.images import load_rgb
from al_pipeline.paths import output_folder, write_atomically
from al_pipeline.reporting.history import load_history, plot_learning_curve
from al_pipeline.store.state import State


def write_report(config: Config, state: State, folder: Path) -> Path:
    """A self-contained HTML page (images inlined): history table, learning curves, the
    latest confusion matrix, and the images the last round selected."""
    output_folder(folder, "The report folder")
    frame = load_history(state)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the report folder {folder}: {exc.strerror}.") from exc
    parts = [
        f"<h1>{html.escape(config.name)}</h1>",
        f"<p class=lead>Active-learning report: classes {html.escape(', '.join(config.classes))}"
        f"; {_summary(frame)}</p>",
    ]
    if frame.empty:
        parts.append("<p>No model trained yet.</p>")
    else:
        parts.append("<h2>What each round bought</h2>" + _history_table(frame, config.classes))
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


def _summary(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "no rounds yet."
    last = frame.iloc[-1]
    accuracy = "n/a" if pd.isna(last["accuracy"]) else f"{last['accuracy']:.3f}"
    return (
        f"{int(last['round'])} round(s) closed, {int(last['labelled'])} labels, held-out "
        f"accuracy {accuracy} after the last one."
    )


def _history_table(frame: pd.DataFrame, classes: Sequence[str]) -> str:
    """The history as a person reads it: titled columns, 3 decimals, short times."""
    columns: list[tuple[str, str, Callable[[Any], str]]] = [
        ("round", "Round", str),
        ("strategy", "Strategy", str),
        ("labelled", "Labels", str),
        ("accuracy", "Accuracy", _decimal),
        ("macro_f1", "Macro-F1", _decimal),
        ("roc_auc", "ROC-AUC", _decimal),
        *((f"recall_{c}", f"Recall {c.replace('_', ' ')}", _decimal) for c in classes),
        ("pool_change", "Pool changed", _decimal),
        ("training_seconds", "Training (s)", _seconds),
        ("checkpoint", "Model", str),
        ("timestamp", "Closed (UTC)", lambda t: str(t)[:16].replace("T", " ")),
    ]
    shown = [c for c in columns if c[0] in frame.columns]
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in shown)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{'' if _missing(row[key]) else html.escape(fmt(row[key]))}</td>"
            for key, _, fmt in shown
        )
        + "</tr>"
        for _, row in frame.iterrows()
    )
    return f"<table class=history><tr>{head}</tr>{body}</table>"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _decimal(value: Any) -> str:
    return f"{float(value):.3f}"


def _seconds(value: Any) -> str:
    return f"{float(value):.1f}"


def _confusion_matrix(state: State) -> str:
    latest = state.checkpoint()
    metrics = latest.metrics if latest else None
    if not metrics:
        return ""
    classes = metrics.classes
    head = "".join(f"<th>{html.escape(c)}</th>" for c in classes)
    body = "".join(
        f"<tr><th>{html.escape(c)}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
        for c, row in zip(classes, metrics.confusion_matrix, strict=True)
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
        name = html.escape(item.path.name)
        cells.append(
            f'<figure title="{html.escape(str(item.path))}"><img alt="{name}" '
            f'src="data:image/jpeg;base64,{src}"><figcaption><span class=file>{name}</span>'
            f"{guess}</figcaption></figure>"
        )
    return (
        f"<h2>Round {last.id}: the {len(cells)} images {html.escape(last.strategy)} "
        f"selected, with the model's guess</h2><div class=grid>{''.join(cells)}</div>"
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}: al-pipeline report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; padding: 0 1rem;
        max-width: 1100px; color: #222; line-height: 1.4; }}
h1 {{ margin-bottom: 0.2rem; }}
.lead {{ color: #555; margin-top: 0; }}
table {{ border-collapse: collapse; font-size: 0.8rem; }}
table.history {{ width: 100%; table-layout: fixed; }}
td, th {{ border: 1px solid #ddd; padding: 0.3rem 0.4rem; text-align: right;
          overflow-wrap: anywhere; }}
th {{ background: #f4f4f4; font-weight: 600; }}
tr:nth-child(even) td {{ background: #fafafa; }}
td:nth-child(2), th:nth-child(2) {{ text-align: left; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 0.75rem; }}
figure {{ margin: 0; width: 128px; font-size: 0.75rem; text-align: center; }}
.file {{ display: block; overflow: hidden; text-overflow: ellipsis; white-space: nowrap;
         color: #555; }}
img {{ max-width: 100%; }}
</style></head><body>
{body}
</body></html>
"""
