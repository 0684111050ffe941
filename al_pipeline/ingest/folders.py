"""[ingest] Folders of images and Pascal VOC boxes into validated, deduplicated items.

Files are walked, validated with Pillow in worker threads, hashed, and registered in
batches, each batch one transaction. A killed run leaves whole batches behind; re-running
skips files already registered (same path, size and mtime) and adds only the rest.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from al_pipeline.config import Config
from al_pipeline.errors import IngestError
from al_pipeline.ingest.images import (
    IMAGE_EXTENSIONS,
    ImageRejected,
    file_state,
    inspect_file,
    is_image_name,
)
from al_pipeline.ingest.split import SplitSummary, assign_test_split
from al_pipeline.paths import name_from, plain_name, write_csv
from al_pipeline.progress import Progress, silent
from al_pipeline.store.items import ImageFile, KnownFile, KnownItem, NewItem, PoolRow
from al_pipeline.store.state import State

BATCH = 128
WORKERS = min(4, os.cpu_count() or 1)

ADDED = "added"
KNOWN = "already registered"
DUPLICATE = "duplicate"
REJECTED = "rejected"
IGNORED = "ignored"


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one file."""

    path: str
    status: str
    reason: str = ""
    detail: str = ""


@dataclass
class IngestReport:
    """The result of one ``pool add`` or ``pool import-voc``."""

    pool: str
    root: Path
    outcomes: list[FileOutcome] = field(default_factory=list)
    labels_added: int = 0
    split: SplitSummary | None = None
    notes: list[str] = field(default_factory=list)

    def counts(self) -> Counter[str]:
        return Counter(outcome.status for outcome in self.outcomes)

    def reasons(self) -> Counter[tuple[str, str]]:
        return Counter(
            (o.status, o.reason) for o in self.outcomes if o.status in (REJECTED, IGNORED)
        )

    def write_csv(self, path: Path) -> None:
        rows = ([o.path, o.status, o.reason, o.detail] for o in self.outcomes)
        write_csv(path, ["path", "status", "reason", "detail"], rows, "the report")


@dataclass(frozen=True)
class Candidate:
    """A file to register, with the label and group source it comes with."""

    path: Path
    label: str | None = None
    source: str | None = None
    hidden: bool = False


def add_folder(
    config: Config,
    state: State,
    folder: Path,
    *,
    pool_name: str | None = None,
    labelled: bool = False,
    test_fraction: float | None = None,
    oracle: bool = False,
    progress: Progress = silent,
) -> IngestReport:
    """Register every image under ``folder`` (recursively) in a pool.

    Args:
        config: The workspace config.
        state: The open state database.
        folder: The folder to walk; it becomes the pool's root.
        pool_name: Pool name (default: the folder's name).
        labelled: Take each file's top-level subfolder name as its class.
        test_fraction: Move this share of labelled items into the held-out test set.
        oracle: Keep the folder labels hidden, for the oracle labeller to reveal when a
            round queries an item (simulation); test-split labels stay visible.
        progress: Progress callback.
    """
    check_test_fraction(test_fraction)
    root = existing_folder(folder)
    name = pool_name_for(config, state, pool_name, root)
    report = IngestReport(name, root)
    paths = list(_walk(root, report, progress, config.own_folders()))
    _check_has_images(root, paths)
    if labelled:
        _check_class_folders(config, root, paths)
    existed = state.pool(name) is not None
    pool = ensure_pool(config, state, name, root)
    candidates: list[Candidate] = []
    for path in paths:
        rel = path.relative_to(root)
        if not is_image_name(path):
            report.outcomes.append(
                FileOutcome(rel.as_posix(), IGNORED, "not_an_image_name", "not an image file name")
            )
        elif labelled and len(rel.parts) < 2:
            report.outcomes.append(
                FileOutcome(
                    rel.as_posix(),
                    REJECTED,
                    "no_class_folder",
                    "labelled pools need each image inside a class folder",
                )
            )
        else:
            candidates.append(Candidate(path, rel.parts[0] if labelled else None, hidden=oracle))
    register(config, state, pool, candidates, report, progress)
    if not existed:
        drop_if_empty(state, pool, report)
    if test_fraction:
        report.split = assign_test_split(config, state, test_fraction, progress)
    return report


def drop_if_empty(
    state: State, pool: PoolRow, report: IngestReport, moved_hint: bool = True
) -> bool:
    """A new pool that got no item is not kept: it would hold the folder's name and root
    for nothing (``al pool move`` could not point a moved pool there). Whether it went;
    ``moved_hint`` adds that hint where all the files were known already."""
    if report.counts()[ADDED] or not state.drop_empty_pool(pool.id):
        return False
    if not report.counts()[DUPLICATE]:
        report.notes.append(f"No file could be registered, so no pool '{pool.name}' was made.")
        return True
    note = f"No file was new, so no pool '{pool.name}' was made."
    if moved_hint:
        note += " If these are a pool's files moved here, 'al pool move POOL FOLDER' points"
        note += " that pool at them."
    report.notes.append(note)
    return True


def register(
    config: Config,
    state: State,
    pool: PoolRow,
    candidates: Sequence[Candidate],
    report: IngestReport,
    progress: Progress = silent,
) -> None:
    """Validate and register candidates in batches, one transaction per batch."""
    root = config.root / pool.root
    known = state.known_files(pool.id)
    total = len(candidates)
    progress("Checking images", 0, total)
    done = 0
    with ThreadPoolExecutor(WORKERS) as workers:
        for batch in _batches(candidates, BATCH):
            fresh, outcomes = _split_known(root, batch, known)
            inspected = list(workers.map(lambda c: _inspect(c, root, config.max_pixels), fresh))
            outcomes += _commit_batch(state, pool, root, inspected, report)
            report.outcomes.extend(outcomes)
            done += len(batch)
            progress("Checking images", done, total)


def _split_known(
    root: Path, batch: Sequence[Candidate], known: dict[str, KnownFile]
) -> tuple[list[Candidate], list[FileOutcome]]:
    fresh: list[Candidate] = []
    outcomes: list[FileOutcome] = []
    for candidate in batch:
        rel = candidate.path.relative_to(root).as_posix()
        seen = known.get(rel)
        if seen is not None and file_state(candidate.path) == (seen.size, seen.mtime_ns):
            outcomes.append(FileOutcome(rel, KNOWN))
        else:
            fresh.append(candidate)
    return fresh, outcomes


def _inspect(
    candidate: Candidate, root: Path, max_pixels: int
) -> tuple[Candidate, ImageFile | ImageRejected]:
    try:
        info, _ = inspect_file(candidate.path, root, max_pixels)
    except ImageRejected as rejected:
        return candidate, rejected
    return candidate, info


def _commit_batch(
    state: State,
    pool: PoolRow,
    root: Path,
    inspected: Sequence[tuple[Candidate, ImageFile | ImageRejected]],
    report: IngestReport,
) -> list[FileOutcome]:
    """Register one batch in one transaction; duplicates are checked against rows
    written earlier in the same transaction too."""
    outcomes: list[FileOutcome] = []
    with state.atomic():
        for candidate, result in inspected:
            rel = candidate.path.relative_to(root).as_posix()
            if isinstance(result, ImageRejected):
                outcomes.append(FileOutcome(rel, REJECTED, result.reason.value, result.detail))
                continue
            at_path = state.item_at(pool.id, rel)
            if at_path is not None:
                outcomes.append(_changed_in_place(state, at_path, result, rel))
                continue
            existing = state.item_by_sha256(result.sha256)
            if existing is not None:
                outcomes.append(_duplicate(state, existing, candidate, rel, report))
                continue
            item = NewItem(rel, result, candidate.label, candidate.source, candidate.hidden)
            state.insert_items(pool.id, [item])
            report.labels_added += item.label is not None and not item.hidden_label
            outcomes.append(FileOutcome(rel, ADDED))
    return outcomes


def _changed_in_place(state: State, item: KnownItem, found: ImageFile, rel: str) -> FileOutcome:
    """A registered path whose size or time changed: the same content is only touched; new
    content is refused, since the item's labels and features belong to the old one."""
    if found.sha256 == item.sha256:
        state.touch_item(item.item_id, found.size, found.mtime_ns)
        return FileOutcome(rel, KNOWN)
    return FileOutcome(
        rel,
        REJECTED,
        "changed_since_registered",
        "the file was replaced after it was registered (its labels and features belong to "
        "the old content); restore it, or add the new image under another name",
    )


def _duplicate(
    state: State,
    item_id: int,
    candidate: Candidate,
    rel: str,
    report: IngestReport,
) -> FileOutcome:
    if candidate.label is None or candidate.hidden:
        return FileOutcome(rel, DUPLICATE, "same_content", "same content as a registered item")
    current = state.current_label(item_id)
    if current is None:
        state.insert_label(item_id, candidate.label, "import")
        report.labels_added += 1
        return FileOutcome(
            rel,
            DUPLICATE,
            "same_content",
            f"same content as a registered item; labelled it '{candidate.label}'",
        )
    if current != candidate.label:
        return FileOutcome(
            rel, REJECTED, "label_conflict", f"same content as an item already labelled '{current}'"
        )
    return FileOutcome(rel, DUPLICATE, "same_content", "same content as a registered item")


def _batches(items: Sequence[Candidate], size: int) -> Iterator[Sequence[Candidate]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _walk(
    root: Path, report: IngestReport, progress: Progress, own: Sequence[Path] = ()
) -> Iterator[Path]:
    """Yield every non-directory entry under root, sorted, without following directory
    links. Hidden folders (``.git``, ``.ipynb_checkpoints``) and the workspace's ``own``
    folders (a workspace made inside the photos' folder) are passed over, and names that
    are not valid UTF-8 are reported and skipped: they cannot be stored or shown."""
    found = 0
    own_names = {path.name: path.resolve() for path in own}
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(dirs):
            if name.startswith(".") or not _valid_name(name):
                dirs.remove(name)
                _passed_over(report, root, Path(folder) / name, folder=True)
            elif name in own_names and (Path(folder) / name).resolve() == own_names[name]:
                dirs.remove(name)
                shown = (Path(folder) / name).relative_to(root).as_posix() + "/"
                why = "the workspace's own folder (models, caches, outputs)"
                report.outcomes.append(FileOutcome(shown, IGNORED, "workspace_folder", why))
        dirs.sort()
        for name in sorted(files):
            if not _valid_name(name):
                _passed_over(report, root, Path(folder) / name, folder=False)
                continue
            found += 1
            if found % 500 == 0:
                progress("Finding files", found, None)
            yield Path(folder) / name
    progress("Finding files", found, found)


def _valid_name(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _passed_over(report: IngestReport, root: Path, path: Path, folder: bool) -> None:
    shown = os.fsencode(path.relative_to(root)).decode("utf-8", "backslashreplace")
    if not _valid_name(path.name):
        what = "folder" if folder else "file"
        report.outcomes.append(
            FileOutcome(
                shown + ("/" if folder else ""),
                REJECTED,
                "bad_file_name",
                f"the {what} name is not valid UTF-8; rename it to register it",
            )
        )
    else:
        report.outcomes.append(FileOutcome(shown + "/", IGNORED, "hidden_folder", "hidden folder"))


def image_files(root: Path, own: Sequence[Path] = ()) -> list[Path]:
    """The image files under ``root`` that ``al pool add`` would find (hidden folders and
    the workspace's ``own`` folders passed over), sorted; a folder without one is refused."""
    paths = list(_walk(root, IngestReport(root.name, root), silent, own))
    _check_has_images(root, paths, then="")
    return [path for path in paths if is_image_name(path)]


def _check_has_images(
    root: Path, paths: Sequence[Path], then: str = " Nothing was registered."
) -> None:
    """A folder without one image name is a wrong path, not an empty pool to register."""
    if not any(is_image_name(p) for p in paths):
        others = f" ({len(paths)} file(s), none named as an image)" if paths else ""
        raise IngestError(
            f"'{root}' holds no image files{others}: looked for "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}, in subfolders too. Pass the folder that "
            f"holds the images.{then}"
        )


def _check_class_folders(config: Config, root: Path, paths: Iterable[Path]) -> None:
    folders = {
        p.relative_to(root).parts[0]
        for p in paths
        if is_image_name(p) and len(p.relative_to(root).parts) > 1
    }
    unknown = sorted(folders - set(config.classes))
    if unknown:
        raise IngestError(
            f"--labelled takes each top-level folder of '{root}' as a class, but "
            f"{', '.join(repr(u) for u in unknown)} "
            f"{'is not a class' if len(unknown) == 1 else 'are not classes'} of this "
            f"workspace (classes: {', '.join(config.classes)}). Rename or move those folders, "
            "or leave out --labelled. Nothing was registered."
        )


def existing_folder(folder: Path) -> Path:
    if not folder.exists():
        raise IngestError(f"'{folder}' does not exist. Pass the folder that holds the images.")
    if not folder.is_dir():
        raise IngestError(f"'{folder}' is not a folder. Pass the folder that holds the images.")
    return folder.resolve()


def check_test_fraction(test_fraction: float | None) -> None:
    """Refuse a share of the labelled items for the test split outside 0 to 1 (or NaN)."""
    if test_fraction is not None and not 0 < test_fraction < 1:
        raise IngestError(
            f"--test-fraction must be between 0 and 1 (exclusive), got {test_fraction}. "
            "A typical value is 0.2."
        )


def pool_name_for(config: Config, state: State, given: str | None, root: Path) -> str:
    """The pool's name: ``--pool`` when given (a plain name), else the pool already
    registered at ``root``, else one made from the folder's name."""
    if given is not None:
        return plain_name(given, "--pool")
    for pool in state.pools():
        if (config.root / pool.root).resolve() == root.resolve():
            return pool.name
    return name_from(root.name)


def ensure_pool(config: Config, state: State, name: str, root: Path) -> PoolRow:
    stored = portable(config, root)
    pool = state.pool(name)
    if pool is None:
        return state.add_pool(name, stored)
    if (config.root / pool.root).resolve() != root:
        raise IngestError(
            f"Pool '{name}' already exists with root '{config.root / pool.root}', not '{root}'. "
            "Choose another name with --pool NAME."
        )
    return pool


def portable(config: Config, root: Path) -> Path:
    """Store roots inside the workspace relative to it, so the workspace can move."""
    try:
        return root.relative_to(config.root.resolve())
    except ValueError:
        return root
