"""The held-out test split: seeded, stratified by class, grouped by near-duplicates.

Items that are near-duplicates of each other (flipped, rotated or zoomed copies, as
perceptual hashes see them) or that come from the same source photo (VOC crops) form one
group, and a group is never split across train and test. Once an item has a split it
never changes; items added later join their group's side, or are split anew.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

from al_pipeline.config import Config
from al_pipeline.ingest.images import load_rgb, near_duplicate_hashes
from al_pipeline.progress import Progress, silent
from al_pipeline.store.items import SplitCandidate
from al_pipeline.store.state import State

HASH_BATCH = 256


@dataclass(frozen=True)
class SplitSummary:
    """What the split step did."""

    fraction: float
    newly_test: int
    newly_train: int
    test_total: int
    train_total: int
    groups: int
    largest_group: int


def assign_test_split(
    config: Config, state: State, fraction: float, progress: Progress = silent
) -> SplitSummary:
    """Give every labelled item without a split one, keeping near-duplicate groups whole."""
    candidates = state.split_candidates()
    hashes = _hashes(config, state, candidates, progress)
    members = [c for c in candidates if c.item_id in hashes]
    groups = group_items(members, hashes, config.near_duplicate_bits, progress)
    assignment = draw_split(members, groups, fraction, config.seed)
    state.assign_split(assignment)
    final = {c.item_id: c.split for c in members} | assignment
    return SplitSummary(
        fraction=fraction,
        newly_test=sum(s == "test" for s in assignment.values()),
        newly_train=sum(s == "train" for s in assignment.values()),
        test_total=sum(s == "test" for s in final.values()),
        train_total=sum(s == "train" for s in final.values()),
        groups=len(groups),
        largest_group=max((len(g) for g in groups), default=0),
    )


def redraw_test_split(config: Config, state: State, seed: int) -> SplitSummary:
    """Draw the test split again with another seed, at the share it has now: for a
    simulation's copy of a workspace whose labels are all hidden (the store refuses any
    other). Groups stay whole, as in :func:`assign_test_split`."""
    candidates = state.split_candidates()
    hashes = _hashes(config, state, candidates, silent)
    hashed = [c for c in candidates if c.item_id in hashes]
    fraction = sum(c.split == "test" for c in hashed) / max(len(hashed), 1)
    members = [replace(c, split=None) for c in hashed]
    groups = group_items(members, hashes, config.near_duplicate_bits)
    assignment = draw_split(members, groups, fraction, seed)
    state.redraw_split(assignment)
    test = sum(side == "test" for side in assignment.values())
    return SplitSummary(
        fraction=fraction,
        newly_test=test,
        newly_train=len(assignment) - test,
        test_total=test,
        train_total=len(assignment) - test,
        groups=len(groups),
        largest_group=max((len(g) for g in groups), default=0),
    )


def _hashes(
    config: Config, state: State, candidates: Sequence[SplitCandidate], progress: Progress
) -> dict[int, tuple[int, bytes]]:
    stored = state.near_dup_hashes(c.item_id for c in candidates)
    missing = [c for c in candidates if c.item_id not in stored]
    progress("Hashing for the test split", 0, len(missing))
    with ThreadPoolExecutor(2) as workers:
        for start in range(0, len(missing), HASH_BATCH):
            batch = missing[start : start + HASH_BATCH]
            computed = {
                item_id: value
                for item_id, value in workers.map(lambda c: _hash_one(config, c), batch)
                if value is not None
            }
            state.save_near_dup_hashes(computed)
            stored.update(computed)
            progress("Hashing for the test split", start + len(batch), len(missing))
    return stored


def _hash_one(config: Config, candidate: SplitCandidate) -> tuple[int, tuple[int, bytes] | None]:
    try:
        image = load_rgb(config.root / candidate.path)
    except (OSError, ValueError, Image.DecompressionBombError):
        return candidate.item_id, None
    canonical, probes = near_duplicate_hashes(image)
    return candidate.item_id, (_signed(canonical), probes.tobytes())


def _signed(value: int) -> int:
    """SQLite integers are signed 64-bit."""
    return value - (1 << 64) if value >= 1 << 63 else value


def group_items(
    members: Sequence[SplitCandidate],
    hashes: dict[int, tuple[int, bytes]],
    max_bits: int,
    progress: Progress = silent,
) -> list[list[int]]:
    """Union items whose probe hashes come within ``max_bits`` of another's canonical hash,
    or that share a source. Returns groups of item ids."""
    ids = [m.item_id for m in members]
    parent = list(range(len(ids)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        parent[find(i)] = find(j)

    canon = np.array([hashes[i][0] for i in ids], dtype=np.int64).view(np.uint64)
    progress("Finding near-duplicates", 0, len(ids))
    for index, item_id in enumerate(ids):
        probes = np.frombuffer(hashes[item_id][1], dtype=np.uint64)
        distance = np.bitwise_count(probes[:, None] ^ canon[None, :]).min(axis=0)
        for other in np.flatnonzero(distance <= max_bits):
            if other != index:
                union(index, int(other))
        if index % 200 == 0:
            progress("Finding near-duplicates", index, len(ids))
    progress("Finding near-duplicates", len(ids), len(ids))
    first_of_source: dict[str, int] = {}
    for index, member in enumerate(members):
        if member.source:
            union(index, first_of_source.setdefault(member.source, index))
    grouped: dict[int, list[int]] = defaultdict(list)
    for index, item_id in enumerate(ids):
        grouped[find(index)].append(item_id)
    return list(grouped.values())


def draw_split(
    members: Sequence[SplitCandidate], groups: list[list[int]], fraction: float, seed: int
) -> dict[int, str]:
    """Sides for the members without one: whole groups, about ``fraction`` of each class
    (by a group's commonest label) on the test side, ordered by a hash of ``seed``."""
    by_id = {m.item_id: m for m in members}
    assignment: dict[int, str] = {}
    fresh_groups: list[list[int]] = []
    for group in groups:
        decided = {by_id[i].split for i in group} - {None}
        undecided = [i for i in group if by_id[i].split is None]
        if not decided:
            fresh_groups.append(group)
        elif undecided:
            side = "test" if "test" in decided else "train"
            assignment.update({i: side for i in undecided})
    by_class: dict[str, list[list[int]]] = defaultdict(list)
    for group in fresh_groups:
        labels = [by_id[i].label for i in group]
        by_class[max(sorted(set(labels)), key=labels.count)].append(group)
    for class_groups in by_class.values():
        class_groups.sort(key=lambda g: _order_key(seed, min(g)))
        target = round(fraction * sum(len(g) for g in class_groups))
        taken = 0
        for group in class_groups:
            side = "test" if taken + len(group) / 2 <= target else "train"
            taken += len(group) if side == "test" else 0
            assignment.update({i: side for i in group})
    return assignment


def _order_key(seed: int, item_id: int) -> str:
    return hashlib.sha256(f"{seed}:{item_id}".encode()).hexdigest()
