"""[round] The round lifecycle, the only module that knows the order of the stages.

start:  score the pool (cached features, current head) -> select -> queue (one transaction)
        -> push to the labeller.
finish: pull labels (written at once) -> train -> evaluate -> history row -> close.
run:    start -> wait for labels -> finish, until a stopping rule fires.
:func:`train_and_evaluate` (train -> evaluate -> round 0) serves ``al train`` and the first
model of a run. Every step checks what is already done, so a crash anywhere is mended by
running the same command again: labels are not written twice, a round's model is not
trained twice.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from al_pipeline.config import Config
from al_pipeline.labelling.base import Labeller, Pulled
from al_pipeline.loop.status import (
    RoundError,
    is_complete,
    pull,
    require_open,
    wait_for_labels,
)
from al_pipeline.loop.stopping import PoolExhausted, StoppingRule
from al_pipeline.model.backbones import Backbone, workspace_backbone
from al_pipeline.model.checkpoints import Checkpoint, find_checkpoint, fits, load_checkpoint
from al_pipeline.model.embeddings import Embedded, drop_features, embed_items, embed_pool
from al_pipeline.model.evaluate import evaluate
from al_pipeline.model.network import TrainingSettings, dropout_rate, sample_proba
from al_pipeline.model.score import head_probabilities
from al_pipeline.model.train import TrainReport, check_classes, train
from al_pipeline.paths import at_least
from al_pipeline.progress import Progress, silent
from al_pipeline.records import STARTING_POINT, HistoryRow, Metrics, RoundParams
from al_pipeline.selection.strategies import (
    NEEDS_LABELLED_FEATURES,
    Picked,
    Pool,
    Sampler,
    get_strategy,
    select,
    strategy_for,
)
from al_pipeline.store.db import now
from al_pipeline.store.rounds import QueuedItem, QueueEntry, RoundRow
from al_pipeline.store.state import State

PREDICTIONS_FILE = "pool_predictions.npz"


@dataclass
class RoundStarted:
    """A round just started (or resumed)."""

    round_id: int
    strategy: str
    queued: list[QueuedItem]
    pool_size: int
    cold_start: bool
    model: str | None
    selection_seconds: float
    resumed: bool = False
    link: str | None = None


@dataclass
class RoundFinished:
    """A closed round and its history row."""

    round_id: int
    history: HistoryRow
    returned: int
    size: int = 0
    labelled: int = 0
    skipped: int = 0
    new_labels: int = 0


def start(
    config: Config,
    state: State,
    labeller: Labeller,
    *,
    strategy: str,
    size: int,
    balance: bool = False,
    progress: Progress = silent,
) -> RoundStarted:
    """Select ``size`` items with ``strategy``, queue them and push them to the labeller.

    An open round whose push was interrupted is pushed again (resumed); any other open
    round is an error.
    """
    chosen = strategy_for(strategy, balance)
    at_least(size, 1, "--size")
    existing = state.open_round()
    if existing is not None:
        return _resume(state, labeller, existing)
    check_classes(config, state.label_counts())
    items = state.selectable()
    if not len(items):
        raise RoundError(
            "The pool has no unlabelled items left to select from. Add more with 'al pool add DIR'."
        )
    refusal = labeller.cannot_label(items.ids)
    if refusal:
        raise RoundError(f"{refusal} Nothing was changed.")
    checkpoint = _current_model(config, state)
    backbone = checkpoint.backbone() if checkpoint else workspace_backbone(config)
    embedded = embed_pool(config, state, backbone, items, progress)
    progress("Selecting", 0, None)
    began = time.perf_counter()
    pool_probs = _probabilities(checkpoint, embedded)
    features, classes = _labelled_features(config, state, backbone, strategy, progress)
    rng = np.random.default_rng([config.seed, len(state.rounds())])
    pool = Pool(
        pool_probs,
        lambda p: embedded.cache.read(embedded.rows[p]),
        len(embedded.rows),
        features,
        rng,
        classes,
        _sampler(checkpoint, embedded, rng),
        _label_counts(config, state),
    )
    if pool.size == 0:
        raise RoundError(
            "None of the pool's images could be read (see 'al pool stats'); nothing to select from."
        )
    picked = select(chosen, pool, size)
    seconds = time.perf_counter() - began
    progress("Selecting", 1, 1)
    entries = _entries(config, items.ids[embedded.positions], picked, pool_probs)
    model_tag = checkpoint.meta.tag if checkpoint else None
    params = RoundParams(
        balance=balance,
        selection_seconds=round(seconds, 3),
        pool_size=len(embedded.rows),
        cold_start=pool_probs is None,
        model=model_tag,
    )
    round_id = state.start_round(strategy, labeller.name, params, entries)
    queued = _push(state, labeller, round_id)
    return RoundStarted(
        round_id,
        strategy,
        queued,
        len(embedded.rows),
        pool_probs is None,
        model_tag,
        seconds,
        link=labeller.link(),
    )


def _resume(state: State, labeller: Labeller, open_round: RoundRow) -> RoundStarted:
    """Push what an interrupted start did not, or refuse: one round at a time."""
    if open_round.labeller != labeller.name:
        raise RoundError(
            f"Round {open_round.id} is open with the {open_round.labeller} labeller. Finish it "
            "with 'al round finish' before starting another."
        )
    if all(q.external_id is not None for q in state.queue(open_round.id)):
        raise RoundError(
            f"Round {open_round.id} is still open ({open_round.strategy}, {open_round.size} "
            "items). Finish it with 'al round finish' (see 'al round status')."
        )
    params = open_round.params
    return RoundStarted(
        open_round.id,
        open_round.strategy,
        _push(state, labeller, open_round.id),
        params.pool_size,
        params.cold_start,
        params.model,
        params.selection_seconds,
        resumed=True,
        link=labeller.link(),
    )


def _push(state: State, labeller: Labeller, round_id: int) -> list[QueuedItem]:
    unpushed = [q for q in state.queue(round_id) if q.external_id is None]
    state.set_external_ids(round_id, labeller.push(round_id, unpushed))
    return state.queue(round_id)


def _current_model(config: Config, state: State) -> Checkpoint | None:
    """The latest model, or None to cold-start: when there is none, or when it was trained
    before a class was added to al.toml (until every class has a label, no model can be
    trained for them all)."""
    row = state.checkpoint()
    if row is None:
        return None
    checkpoint = load_checkpoint(config.root / row.path)
    return checkpoint if fits(checkpoint, config) else None


def _probabilities(checkpoint: Checkpoint | None, embedded: Embedded) -> NDArray[np.float32] | None:
    return None if checkpoint is None else head_probabilities(checkpoint, embedded)


def _sampler(
    checkpoint: Checkpoint | None, embedded: Embedded, rng: np.random.Generator
) -> Sampler | None:
    """MC-dropout passes of the checkpoint's head over cached features (bald), if it has
    dropout."""
    if checkpoint is None or dropout_rate(checkpoint.head) == 0:
        return None
    head = checkpoint.head
    return lambda p, passes: sample_proba(head, embedded.cache.read(embedded.rows[p]), passes, rng)


def _label_counts(config: Config, state: State) -> NDArray[np.int64]:
    """Training labels per class, in the model's class order."""
    counts = state.label_counts()
    return np.array([counts.get(name, 0) for name in config.classes], dtype=np.int64)


def _labelled_features(
    config: Config, state: State, backbone: Backbone, strategy: str, progress: Progress
) -> tuple[NDArray[np.float32] | None, NDArray[np.int64] | None]:
    """Features and class indices of the labelled items, which only the strategies that
    compare the pool with them need."""
    wanted = strategy in NEEDS_LABELLED_FEATURES
    labelled = state.labelled_items("train") if wanted else []
    if not labelled:
        return None, None
    embedded = embed_items(config, state, backbone, labelled, progress)
    kept = [labelled[p] for p in embedded.positions]
    classes = np.array([config.class_index(item.label) for item in kept], dtype=np.int64)
    return embedded.features(), classes


def _entries(
    config: Config, pool: NDArray[np.int64], picked: Picked, probs: NDArray[np.float32] | None
) -> list[QueueEntry]:
    """Queue rows in selection order (``pool``: the item id of each pool position), with
    the model's guess, its confidence (the score Label Studio sorts by, least confident
    first) and the strategy's utility."""
    entries = []
    positions, utilities = (part.tolist() for part in picked)
    for position, (index, utility) in enumerate(zip(positions, utilities, strict=True)):
        predicted, confidence = None, None
        if probs is not None:
            best = int(np.argmax(probs[index]))
            predicted, confidence = config.classes[best], float(probs[index][best])
        kept = None if math.isnan(utility) else utility
        entries.append(QueueEntry(int(pool[index]), position, predicted, confidence, kept))
    return entries


def finish(
    config: Config,
    state: State,
    labeller: Labeller,
    settings: TrainingSettings,
    *,
    min_labelled: int | None = None,
    partial: bool = False,
    pulled: Pulled | None = None,
    progress: Progress = silent,
) -> RoundFinished:
    """Pull labels, retrain, evaluate, record the history row and close the round.

    By default every queued item must be labelled (or skipped); ``min_labelled`` accepts
    fewer, ``partial`` accepts whatever came back. Unlabelled items return to the pool.
    A caller that has just pulled (and so recorded) the round's labels passes that pull
    as ``pulled`` rather than have Label Studio list every task again.
    """
    if min_labelled is not None:
        at_least(min_labelled, 1, "--min-labelled")
    open_round = require_open(state)
    if pulled is None:
        pulled = pull(state, labeller, open_round.id)
    queue = state.queue(open_round.id)
    labelled = sum(q.state == "labelled" for q in queue)
    pending = sum(q.state == "pending" for q in queue)
    needed = (
        len(queue) - sum(q.state == "skipped" for q in queue)
        if min_labelled is None
        else min_labelled
    )
    if not partial and labelled < needed:
        raise RoundError(
            f"Round {open_round.id}: {labelled} of {len(queue)} items labelled, {pending} "
            f"pending (need {needed}). Label the rest, or finish with --min-labelled K or "
            "--partial to return the unlabelled items to the pool."
            + labeller.unlabelled_hint
            + (
                f" Annotators disagree with no majority on items {pulled.unresolved}: add a "
                "deciding annotation."
                if pulled.unresolved
                else ""
            )
            + (f" Label them at {link}" if (link := labeller.link()) else "")
        )
    row = _train_and_record(config, state, open_round, settings, progress)
    state.close_round(open_round.id)
    _drop_stale_features(config, state)
    return RoundFinished(
        open_round.id,
        row,
        returned=pending,
        size=len(queue),
        labelled=labelled,
        skipped=sum(q.state == "skipped" for q in queue),
        new_labels=pulled.written,
    )


def _drop_stale_features(config: Config, state: State) -> None:
    """Drop the cached features of fine-tuned round models older than the newest model.

    A round scores the pool with the newest model, and the round after compares that model
    with its successor, so older rounds' fine-tuned weights are never scored with again.
    Without this, a loop that fine-tunes every round would add the whole pool's features to
    the cache each round. Features of pretrained weights, shared by every head, stay, and
    so do those of models a person trained with ``al train``, who may evaluate them again.
    """
    checkpoints = state.checkpoints()
    if not checkpoints:
        return
    stale = [c for c in checkpoints[:-1] if c.round_id is not None and c.meta.fine_tuned]
    # A model trained again on the same labels with the same seed has the same weights.
    kept = {c.meta.features_digest for c in checkpoints if c not in stale}
    drop_features(config, state, {c.meta.features_digest for c in stale} - kept)


def _train_and_record(
    config: Config,
    state: State,
    open_round: RoundRow,
    settings: TrainingSettings,
    progress: Progress,
) -> HistoryRow:
    registered = state.round_checkpoint(open_round.id)
    if registered is None and not _can_train(config, state):
        return _record_untrained(config, state, open_round)
    if registered is None:
        tag = f"round-{open_round.id:03d}"
        train_and_evaluate(
            config, state, settings, tag=tag, round_id=open_round.id, progress=progress
        )
    elif registered.metrics is None and state.labelled_items("test"):
        # Killed between registering the round's model and evaluating it: evaluate now, so
        # the row is the one a clean run records.
        evaluate(config, state, registered.tag, progress)
    row_checkpoint = state.round_checkpoint(open_round.id)
    assert row_checkpoint is not None
    previous = state.checkpoint_before(row_checkpoint.id)
    metrics = row_checkpoint.metrics
    change = _pool_change(
        config, state, row_checkpoint.tag, previous.tag if previous else None, progress
    )
    seconds = row_checkpoint.meta.training_seconds
    row = history_row(config, state, open_round, metrics, change, seconds, row_checkpoint.tag)
    state.save_history(open_round.id, row)
    return row


def train_and_evaluate(
    config: Config,
    state: State,
    settings: TrainingSettings,
    *,
    tag: str | None = None,
    round_id: int | None = None,
    force: bool = False,
    progress: Progress = silent,
) -> TrainReport:
    """Train and register a checkpoint (:func:`al_pipeline.model.train.train`), then
    evaluate it when the workspace has a test split.

    Trained before the first round, the model is the starting point: the history's round 0
    (a later one, still before round 1, replaces it).
    """
    report = train(
        config, state, settings, tag=tag, round_id=round_id, force=force, progress=progress
    )
    if state.labelled_items("test"):
        evaluation = evaluate(config, state, report.tag, progress)
        report.metrics = evaluation.metrics
        report.features_computed += evaluation.features_computed
    if round_id is None and not state.rounds():
        row = history_row(
            config, state, None, report.metrics, None, report.training_seconds, report.tag
        )
        state.save_history(None, row)
    return report


def history_row(
    config: Config,
    state: State,
    open_round: RoundRow | None,
    metrics: Metrics | None,
    change: float | None,
    training_seconds: float,
    tag: str | None,
    note: str | None = None,
) -> HistoryRow:
    """The row of a closed round, or of round 0 (``open_round=None``): the one builder, so
    the starting point and each round record alike."""
    counts = state.label_counts()
    labelled = sum(counts.values())
    selection = open_round.params.selection_seconds if open_round else None
    return HistoryRow(
        round=open_round.id if open_round else 0,
        strategy=open_round.strategy if open_round else STARTING_POINT,
        labelled=labelled,
        batch_size=open_round.size if open_round else labelled,
        labeller=open_round.labeller if open_round else "import",
        labelled_per_class={c: counts.get(c, 0) for c in config.classes},
        accuracy=metrics.accuracy if metrics else None,
        macro_f1=metrics.macro_f1 if metrics else None,
        roc_auc=metrics.roc_auc if metrics else None,
        recall={c: v.recall for c, v in metrics.per_class.items()} if metrics else {},
        pool_change=change,
        selection_seconds=selection,
        training_seconds=round(training_seconds, 2),
        checkpoint=tag,
        model_version=tag,
        timestamp=now(),
        note=note,
    )


def _record_untrained(config: Config, state: State, open_round: RoundRow) -> HistoryRow:
    """A round whose labels still miss a class: no model yet (the next round starts cold)."""
    row = history_row(
        config,
        state,
        open_round,
        None,
        None,
        0.0,
        None,
        note="not every class has a label yet: no model trained",
    )
    state.save_history(open_round.id, row)
    return row


def _pool_change(
    config: Config, state: State, tag: str, previous: str | None, progress: Progress
) -> float | None:
    """Share of the pool whose predicted class changed since the previous model.

    Each round's model saves its predictions for the pool (cached features, head only) in
    its checkpoint folder; the share is computed over items both models predicted.
    """
    _, checkpoint = find_checkpoint(config, state, tag)
    items = state.selectable()
    embedded = embed_pool(config, state, checkpoint.backbone(), items, progress)
    probs = _probabilities(checkpoint, embedded)
    ids = items.ids[embedded.positions]
    classes = np.zeros(0, np.int8) if probs is None else probs.argmax(axis=1).astype(np.int8)
    names = np.array(config.classes)
    np.savez(checkpoint.path / PREDICTIONS_FILE, ids=ids, classes=classes, names=names)
    before = state.checkpoint(previous) if previous else None
    earlier = config.root / before.path / PREDICTIONS_FILE if before else None
    if earlier is None or not earlier.is_file():
        return None
    old = np.load(earlier)
    common, mine, theirs = np.intersect1d(ids, old["ids"], return_indices=True)
    if len(common) == 0:
        return None
    # Compared by name: a class added to al.toml between the two models, before the old
    # ones, moves their indices. Files saved without names were for today's classes.
    old_names = old["names"] if "names" in old.files else names
    return float((names[classes[mine]] != old_names[old["classes"][theirs]]).mean())


@dataclass
class RunReport:
    """What ``al run`` did and why it stopped."""

    rows: list[HistoryRow] = field(default_factory=list)
    stopped_because: str = ""
    initial: Metrics | None = None


def start_unless_open(
    config: Config,
    state: State,
    labeller: Labeller,
    *,
    strategy: str,
    size: int,
    balance: bool = False,
    progress: Progress = silent,
) -> RoundStarted | None:
    """Start a round, unless one is open or nothing is left to select (None)."""
    if state.open_round() is not None or not state.has_selectable():
        return None
    return start(
        config, state, labeller, strategy=strategy, size=size, balance=balance, progress=progress
    )


def finish_if_labelled(
    config: Config,
    state: State,
    labeller: Labeller,
    settings: TrainingSettings,
    *,
    min_labelled: int | None = None,
    progress: Progress = silent,
) -> RoundFinished | None:
    """Pull the open round's labels; finish it once its batch is labelled (or
    ``min_labelled`` items are). None while there is nothing to finish."""
    open_round = state.open_round()
    if open_round is None:
        return None
    pulled = pull(state, labeller, open_round.id)
    if not is_complete(state, open_round.id, min_labelled):
        return None
    return finish(
        config,
        state,
        labeller,
        settings,
        min_labelled=min_labelled,
        pulled=pulled,
        progress=progress,
    )


@dataclass(frozen=True)
class RunPlan:
    """What ``al run`` repeats, and when it stops (besides after ``rounds`` rounds)."""

    rounds: int
    strategy: str = "auto"
    size: int = 20
    balance: bool = False
    stop: tuple[StoppingRule, ...] = ()  # besides: nothing left to select
    poll_seconds: float = 10.0


def run(
    config: Config,
    state: State,
    labeller: Labeller,
    settings: TrainingSettings,
    plan: RunPlan,
    progress: Progress = silent,
) -> RunReport:
    """Repeat start -> wait for labels -> finish until ``plan.rounds`` are done or a
    stopping rule fires (:mod:`al_pipeline.loop.stopping`). A labeller that answers at once
    (the oracle) is not waited for; any other is pulled every ``plan.poll_seconds`` until
    the round's items are all labelled or skipped.
    """
    get_strategy(plan.strategy)
    at_least(plan.rounds, 1, "--rounds")
    at_least(plan.size, 1, "--size")
    at_least(plan.poll_seconds, 0.1, "--poll-seconds")

    def finish_when_labelled(round_id: int) -> HistoryRow:
        pulled = (
            None
            if labeller.answers_at_once
            else wait_for_labels(
                state, labeller, round_id, poll_seconds=plan.poll_seconds, progress=progress
            )
        )
        return finish(config, state, labeller, settings, pulled=pulled, progress=progress).history

    rules = (*plan.stop, PoolExhausted())

    def stop_reason() -> str | None:
        return next((r for rule in rules if (r := rule.reason(state, report.rows))), None)

    report = RunReport()
    open_round = state.open_round()
    if open_round is not None:
        report.rows.append(finish_when_labelled(open_round.id))
    if state.checkpoint() is None and _can_train(config, state):
        report.initial = train_and_evaluate(
            config, state, settings, tag="initial", progress=progress
        ).metrics
    while len(report.rows) < plan.rounds:
        reason = stop_reason()
        if reason:
            report.stopped_because = reason
            return report
        batch = min(rule.cap(state, plan.size) for rule in rules)
        started = start(
            config,
            state,
            labeller,
            strategy=plan.strategy,
            size=batch,
            balance=plan.balance,
            progress=progress,
        )
        report.rows.append(finish_when_labelled(started.round_id))
    report.stopped_because = (
        stop_reason() or f"ran {plan.rounds} round{'s' if plan.rounds != 1 else ''}"
    )
    return report


def _can_train(config: Config, state: State) -> bool:
    counts = state.label_counts()
    return all(counts.get(c, 0) > 0 for c in config.classes)
