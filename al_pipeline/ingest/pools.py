"""[ingest] A pool's life after ``pool add``: its files moved, or the pool removed.

Both are checked in full before anything changes, and change the state in one
transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from al_pipeline.config import Config
from al_pipeline.errors import IngestError
from al_pipeline.ingest.folders import existing_folder, portable
from al_pipeline.ingest.images import file_sha256, file_state
from al_pipeline.progress import Progress, silent
from al_pipeline.store.items import KnownFile, PoolRow, PoolUse
from al_pipeline.store.state import State


def named_pool(state: State, name: str) -> PoolRow:
    pool = state.pool(name)
    if pool is None:
        known = ", ".join(p.name for p in state.pools()) or "none yet"
        raise IngestError(f"No pool '{name}' (pools: {known}). See 'al pool stats'.")
    return pool


def _refuse_while_open(state: State, why: str, then: str) -> None:
    opened = state.open_round()
    if opened is not None:
        raise IngestError(
            f"Round {opened.id} is open{why}. Finish it ('al round finish'), then {then}."
        )


# How many of a moved pool's files are compared by content (sizes are compared for all).
HASHED_ON_MOVE = 64


@dataclass(frozen=True)
class PoolMoved:
    """What ``al pool move`` changed."""

    pool: str
    old_root: Path
    root: Path
    files: int
    hashed: int


def move_pool(
    config: Config, state: State, name: str, folder: Path, progress: Progress = silent
) -> PoolMoved:
    """Point pool ``name`` at ``folder``, where its files are now (the photos moved, or
    the workspace went to another machine). Every file must be there, under the same path
    inside it and with the size it had, and a spread of ``HASHED_ON_MOVE`` of them must
    have the same content: a wrong folder changes nothing. Refused while a round is open,
    since its labelling tasks show the files where they were."""
    root = existing_folder(folder)
    pool = _pool_to_move(config, state, name, root)
    known = state.known_files(pool.id)
    _check_sizes(root, known, name, progress)
    hashed = _check_contents(state, pool, root, known, progress)
    state.move_pool(pool.id, portable(config, root))
    return PoolMoved(name, config.root / pool.root, root, len(known), hashed)


def _pool_to_move(config: Config, state: State, name: str, root: Path) -> PoolRow:
    pool = named_pool(state, name)
    _refuse_while_open(
        state, ", and its labelling tasks show the files where they were", "move the pool"
    )
    for other in state.pools():
        if other.id != pool.id and (config.root / other.root).resolve() == root:
            raise IngestError(
                f"'{root}' is already the folder of pool '{other.name}'. Pass another one."
            )
    return pool


def _check_sizes(root: Path, known: dict[str, KnownFile], name: str, progress: Progress) -> None:
    progress("Checking files", 0, len(known))
    wrong = []
    for done, (relpath, registered) in enumerate(sorted(known.items()), start=1):
        found = file_state(root / relpath)
        if found is None or found[0] != registered.size:
            wrong.append(relpath)
        if done % 1000 == 0 or done == len(known):
            progress("Checking files", done, len(known))
    if wrong:
        raise IngestError(
            f"{len(wrong)} of the {len(known)} files of pool '{name}' are not in '{root}' as "
            f"they were registered (the first: {wrong[0]}, missing or of another size). Pass "
            "the folder that holds them now, with the same subfolders. Nothing was changed."
        )


def _check_contents(
    state: State, pool: PoolRow, root: Path, known: dict[str, KnownFile], progress: Progress
) -> int:
    """Compare the content hash of a spread of the files; how many were compared."""
    ordered = sorted(known.items())
    count = min(HASHED_ON_MOVE, len(ordered))
    sample = [ordered[i * len(ordered) // count] for i in range(count)]
    refs = state.item_refs([registered.item_id for _, registered in sample])
    progress("Comparing contents", 0, len(sample))
    for done, ((relpath, _), ref) in enumerate(zip(sample, refs, strict=True), start=1):
        try:
            sha = file_sha256(root / relpath)
        except OSError as exc:
            raise IngestError(
                f"Cannot read '{root / relpath}' ({exc.strerror}). Nothing was changed."
            ) from exc
        if sha != ref.sha256:
            raise IngestError(
                f"'{root / relpath}' is not the file pool '{pool.name}' registered at "
                f"'{relpath}' (its content differs). Pass the folder that holds the pool's "
                "own files. Nothing was changed."
            )
        progress("Comparing contents", done, len(sample))
    return len(sample)


@dataclass(frozen=True)
class PoolRemoved:
    """What ``al pool remove`` took out of the workspace (its files stay where they are)."""

    pool: str
    root: Path
    items: int
    labels: int
    test: int


def remove_pool(
    config: Config,
    state: State,
    name: str,
    drop_labels: bool = False,
    progress: Progress = silent,
) -> PoolRemoved:
    """Take pool ``name`` and its items out of the workspace: a folder added by mistake,
    or one no longer wanted. Its image files, and their cached features, are left alone.

    Refused if a round ever queried one of its items (the rounds' records refer to them),
    and, unless ``drop_labels``, if any of its items carries a label: those labels would
    go with it. Hidden oracle labels go with their items. The checks and the removal are
    one transaction, so a round started meanwhile cannot slip between them.
    """
    with state.atomic():
        pool = named_pool(state, name)
        use = state.pool_use(pool.id)
        _check_removable(state, name, use, drop_labels)
        progress("Removing items", 0, use.items)  # a pool of millions takes minutes
        state.remove_pool(pool.id)
        progress("Removing items", use.items, use.items)
    return PoolRemoved(name, config.root / pool.root, use.items, use.labelled, use.test)


def _check_removable(state: State, name: str, use: PoolUse, drop_labels: bool) -> None:
    _refuse_while_open(state, "", "remove the pool")
    if use.queried:
        raise IngestError(
            f"Pool '{name}' cannot be removed: rounds queried {use.queried} of its items (the "
            f"first, round {use.first_round}), and the history and reports refer to them. "
            "Nothing was changed."
        )
    if use.labelled and not drop_labels:
        raise IngestError(
            f"Pool '{name}' holds {use.labelled} labelled item(s), whose labels would go with "
            "it. Keep them with 'al export labels --out FILE' if you need them, then pass "
            "--drop-labels. Nothing was changed."
        )
