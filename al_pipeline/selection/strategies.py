"""[select] Query strategies: which unlabelled items to label next.

A strategy is a plain function ``(pool, n) -> (positions, utilities)``, as modAL's query
functions return indices and scores: ``utilities`` says how informative each pick looked
(higher is more; NaN where a strategy has no such score: random, cold start).
:class:`ClassBalancer` wraps any strategy.

The uncertainty strategies are modAL's query functions (``uncertainty_sampling``,
``margin_sampling``, ``entropy_sampling``, ``uncertainty_batch_sampling``), given an
estimator whose ``predict_proba`` returns the probabilities the head already computed for
the pool. Over a pool of N items, selection therefore costs O(N) time and O(N x classes)
memory, however large the embeddings are. modAL's ``ActiveLearner`` is not used (its
``teach()`` breaks on scikit-learn >= 1.8); see README.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from modAL.batch import uncertainty_batch_sampling
from modAL.uncertainty import entropy_sampling, margin_sampling, uncertainty_sampling
from numpy.typing import NDArray
from sklearn.cluster import KMeans

from al_pipeline.errors import ConfigError

Positions = NDArray[np.int64]
Utilities = NDArray[np.float64]
Picked = tuple[Positions, Utilities]
FeatureReader = Callable[[Positions], NDArray[np.float32]]
# (positions, passes) -> (passes, len(positions), classes): the head run with dropout on.
Sampler = Callable[[Positions, int], NDArray[np.float32]]
BALANCED = "+balance"  # a strategy name's suffix that wraps it in ClassBalancer
COLD_START_SAMPLE = 10_000
DIVERSE_CANDIDATES = 20


@dataclass
class Pool:
    """What a strategy sees of the unlabelled pool.

    Attributes:
        probabilities: ``(N, classes)`` from the current model, or None at cold start.
        read_features: Backbone features for pool positions (from the embedding cache).
        size: N.
        labelled_features: Features of the labelled items (diverse, targeted), if any.
        rng: Seeded random generator.
        labelled_classes: Class index of each row of ``labelled_features`` (targeted).
        sample_probabilities: Stochastic passes of the head (bald), if the model has one.
        label_counts: Training labels per class, in the model's class order (auto).
    """

    probabilities: NDArray[np.float32] | None
    read_features: FeatureReader
    size: int
    labelled_features: NDArray[np.float32] | None = None
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))
    labelled_classes: NDArray[np.int64] | None = None
    sample_probabilities: Sampler | None = None
    label_counts: NDArray[np.int64] | None = None

    def subset(self, positions: Positions) -> Pool:
        """The same pool restricted to ``positions`` (positions of the subset are local)."""
        probabilities = None if self.probabilities is None else self.probabilities[positions]
        sampler = self.sample_probabilities
        return Pool(
            probabilities,
            lambda local: self.read_features(positions[local]),
            len(positions),
            self.labelled_features,
            self.rng,
            self.labelled_classes,
            None if sampler is None else lambda local, passes: sampler(positions[local], passes),
            self.label_counts,
        )


class PrecomputedEstimator:
    """The estimator handed to modAL: ``predict_proba`` looks probabilities up.

    ``X`` is either a column of pool positions (uncertainty strategies) or, for ranked
    batch sampling, the candidates' features in the order of ``candidate_probabilities``.
    ``X_training`` and ``on_transformed`` are what modAL's ranked batch reads off a learner.
    """

    on_transformed = False

    def __init__(
        self, probabilities: NDArray[np.float32], X_training: NDArray[np.float32] | None = None
    ) -> None:
        self.probabilities = probabilities
        self.X_training = X_training

    def predict_proba(self, X: NDArray[np.generic]) -> NDArray[np.float32]:
        if X.shape[1] == 1 and np.issubdtype(X.dtype, np.integer):
            return np.asarray(self.probabilities[X[:, 0]], dtype=np.float32)
        return self.probabilities


Strategy = Callable[[Pool, int], Picked]


def _no_utility(positions: Positions) -> Picked:
    return positions, np.full(len(positions), np.nan)


def _query(
    function: Callable[..., tuple[Positions, NDArray[np.floating]]], higher_is_better: bool = True
) -> Strategy:
    """A modAL query function as a strategy. Its scores become utilities; margin's (the
    gap between the two likeliest classes: smaller is more uncertain) as ``1 - margin``."""

    def strategy(pool: Pool, n: int) -> Picked:
        if pool.probabilities is None:
            return coverage(pool, n)
        column = np.arange(pool.size, dtype=np.int64)[:, None]
        indices, scores = function(PrecomputedEstimator(pool.probabilities), column, n_instances=n)
        values = np.asarray(scores, dtype=np.float64)
        return np.asarray(indices, dtype=np.int64), values if higher_is_better else 1 - values

    strategy.__doc__ = f"modAL's {function.__name__} on the head's probabilities."
    return strategy


def random(pool: Pool, n: int) -> Picked:
    """Uniformly random items: the baseline every report compares against."""
    return _no_utility(pool.rng.choice(pool.size, size=n, replace=False).astype(np.int64))


def coverage(pool: Pool, n: int) -> Picked:
    """Cold start: items nearest to k-means centres of the pool's features (k = n).

    Without a model, uncertainty means nothing; covering the embedding space gives the
    first model examples of every kind of image instead of n random picks that may all
    come from the commonest kind. Large pools are clustered on a sample.
    """
    sample = pool.rng.choice(pool.size, size=min(pool.size, COLD_START_SAMPLE), replace=False)
    sample = np.sort(sample).astype(np.int64)
    features = pool.read_features(sample)
    if len(sample) <= n:
        return _no_utility(sample[:n])
    kmeans = KMeans(n_clusters=n, n_init=1, random_state=int(pool.rng.integers(1 << 31)))
    kmeans.fit(features)
    distances = kmeans.transform(features)
    chosen: list[int] = []
    for centre in range(n):
        best = int(np.argmin(distances[:, centre]))
        distances[best, :] = np.inf
        chosen.append(best)
    return _no_utility(sample[np.array(chosen, dtype=np.int64)])


def diverse(pool: Pool, n: int) -> Picked:
    """modAL's ranked batch (Cardoso et al.): uncertainty balanced against distance to what
    is labelled and already picked, so a batch is not n copies of one hard image.

    It runs on the most uncertain ``20 n`` candidates, so its cost does not grow with the
    pool; at cold start it is :func:`coverage`. Utilities are the picks' uncertainty.
    """
    if pool.probabilities is None:
        return coverage(pool, n)
    uncertainty = 1 - pool.probabilities.max(axis=1)
    count = min(pool.size, DIVERSE_CANDIDATES * n)
    candidates = np.argpartition(-uncertainty, count - 1)[:count].astype(np.int64)
    features = pool.read_features(candidates)
    estimator = PrecomputedEstimator(pool.probabilities[candidates], pool.labelled_features)
    indices, scores = uncertainty_batch_sampling(estimator, features, n_instances=n)
    return candidates[np.asarray(indices, dtype=np.int64)], np.asarray(scores, np.float64)


SIMILARITY_CHUNK = 65_536
# Strategies that compare the pool with the labelled items' features.
NEEDS_LABELLED_FEATURES = frozenset({"diverse", "targeted"})


def targeted(pool: Pool, n: int) -> Picked:
    """Uncertainty weighted by likeness to the labelled examples of the rarest class
    (after SIMILAR, Kothawade et al. 2021, and SEALS, Coleman et al. 2022).

    A rare class is often one the model is not yet unsure about: its members look
    confidently like a common class. Margin sampling then never finds them. Here each
    item's ``1 - margin`` is multiplied by its cosine similarity (mapped to [0, 1]) to the
    nearest labelled item of the rarest class (the one the model expects least of in the
    pool), so the picks are the unsure items that look like the rare class. The pool's
    features are read in chunks, so memory does not grow with the pool. Without labelled
    features it is margin sampling; at cold start, :func:`coverage`.
    """
    if pool.probabilities is None:
        return coverage(pool, n)
    margin = STRATEGIES["margin"]
    if pool.labelled_features is None or pool.labelled_classes is None:
        return margin(pool, n)
    # The rarest class is the one the model expects least of in the pool (the labels may
    # have been drawn evenly per class), among the classes with a labelled example.
    expected = pool.probabilities.mean(axis=0)
    labelled = np.bincount(pool.labelled_classes, minlength=len(expected)) > 0
    rarest = int(np.argmin(np.where(labelled, expected, np.inf)))
    examples = _unit(pool.labelled_features[pool.labelled_classes == rarest])
    ordered = np.sort(pool.probabilities, axis=1)
    uncertainty = 1.0 - (ordered[:, -1] - ordered[:, -2])
    return _top(uncertainty * (_likeness(pool, examples) + 1.0) / 2.0, n)


def rare_first(pool: Pool, n: int) -> Picked:
    """Half the batch: the items likeliest to be of the rarest class; the rest by margin.

    The rarest class is the one the model expects least of in the pool (its mean
    probability). Its likeliest members are the "most likely positives" of rare-concept
    search (SEALS, Coleman et al. 2022): on a rare class the model is seldom unsure about,
    they find its members where margin finds few, and each one labelled makes the next
    ranking better. The other half goes to the most uncertain items, so the boundaries
    between the common classes still get labels. Utilities are the rare-class probability
    for the first half and ``1 - margin`` for the rest. At cold start, :func:`coverage`.
    """
    if pool.probabilities is None:
        return coverage(pool, n)
    rarest = int(np.argmin(pool.probabilities.mean(axis=0)))
    return _likeliest_then_margin(pool, n, rarest, -(-n // 2))


def auto(pool: Pool, n: int) -> Picked:
    """Margin sampling, with a search for a class while it is short of labels.

    The class with the smallest share ``s`` of the training labels (ties: the one the model
    expects least of in the pool) gets ``max(0, 1 - 2 K s)`` of the batch (K classes) from
    its likeliest members, as in :func:`rare_first`; the rest goes to margin. The search is
    off once that class holds half its even share (``1 / 2K``) of the labels, so on
    balanced classes this is margin sampling, and a rare class the model is seldom unsure
    about still gets found. It is the default: on the VOC face crops it queries the rare
    class more often than margin, and on a balanced 2-class pool it is margin (see
    docs/benchmarks.md). Without label counts it is margin; at cold start,
    :func:`coverage`.
    """
    if pool.probabilities is None:
        return coverage(pool, n)
    counts = pool.label_counts
    if counts is None or counts.sum() == 0:
        return STRATEGIES["margin"](pool, n)
    shares = counts / counts.sum()
    target = int(np.lexsort((pool.probabilities.mean(axis=0), shares))[0])
    search = max(0.0, 1.0 - 2 * len(counts) * float(shares[target]))
    return _likeliest_then_margin(pool, n, target, math.ceil(n * search))


def _likeliest_then_margin(pool: Pool, n: int, target: int, likeliest: int) -> Picked:
    """The ``likeliest`` items with the highest probability of class ``target``, then the
    rest of ``n`` by margin. Utilities: that probability, then ``1 - margin``."""
    assert pool.probabilities is not None
    likely, utilities = _top(pool.probabilities[:, target].astype(np.float64), likeliest)
    if len(likely) == n:
        return likely, utilities
    rest = np.setdiff1d(np.arange(pool.size, dtype=np.int64), likely)
    local, margins = STRATEGIES["margin"](pool.subset(rest), n - len(likely))
    return np.concatenate([likely, rest[local]]), np.concatenate([utilities, margins])


def _likeness(pool: Pool, examples: NDArray[np.float32]) -> NDArray[np.float32]:
    """Each pool item's cosine similarity to the nearest of ``examples`` (unit rows)."""
    chunks = max(1, -(-pool.size // SIMILARITY_CHUNK))
    parts = [
        (_unit(pool.read_features(chunk)) @ examples.T).max(axis=1)
        for chunk in np.array_split(np.arange(pool.size, dtype=np.int64), chunks)
    ]
    return np.concatenate(parts)


def _unit(rows: NDArray[np.floating]) -> NDArray[np.float32]:
    rows = np.asarray(rows, np.float32)
    norms = np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
    return np.asarray(rows / norms, np.float32)


def _top(utility: NDArray[np.floating], n: int) -> Picked:
    """The ``n`` highest utilities, best first; equal ones in pool order, and NaN last.

    Ties are broken by position, not left to ``argpartition``, whose order among equal
    values depends on the processor's vector instructions: the same pool and seed pick the
    same items on every machine.
    """
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    order = np.where(np.isnan(utility), np.inf, -np.asarray(utility, np.float64))
    picked: NDArray[np.int64]
    if n >= len(order):
        picked = np.arange(len(order), dtype=np.int64)
    else:
        nth = np.partition(order, n - 1)[n - 1]
        better = np.flatnonzero(order < nth)
        picked = np.concatenate([better, np.flatnonzero(order == nth)[: n - len(better)]])
    picked = picked[np.argsort(order[picked], kind="stable")].astype(np.int64)
    return picked, np.asarray(utility[picked], np.float64)


def balanced_margin(pool: Pool, n: int) -> Picked:
    """Per-class one-vs-rest margins with equal quotas (after BASE, Emam et al. 2021).

    For class c, an item's distance to c's boundary is ``|p_c - max_{j != c} p_j|``. Each
    class in turn (quotas differ by at most one) takes the unpicked items nearest its
    boundary, whatever the model predicts for them. A rare class the model almost never
    predicts still gets its share of the items it half believes in, where plain margin
    spends the whole batch on the boundary between two common classes. Utilities are
    ``1 - distance``. At cold start, :func:`coverage`.
    """
    if pool.probabilities is None:
        return coverage(pool, n)
    probs = pool.probabilities.astype(np.float64)
    classes = probs.shape[1]
    taken = np.zeros(pool.size, dtype=bool)
    positions: list[int] = []
    utilities: list[float] = []
    for cls, quota in enumerate(even_shares(n, classes)):
        others = np.delete(probs, cls, axis=1).max(axis=1)
        utility = np.where(taken, -np.inf, 1.0 - np.abs(probs[:, cls] - others))
        picked, values = _top(utility, quota) if quota else (np.zeros(0, np.int64), None)
        taken[picked] = True
        positions += picked.tolist()
        utilities += [] if values is None else values.tolist()
    return np.array(positions, dtype=np.int64), np.array(utilities, dtype=np.float64)


BADGE_CANDIDATES = 10_000


def badge(pool: Pool, n: int) -> Picked:
    """BADGE (Ash et al. 2020): k-means++ seeding on the head's gradient embeddings.

    An item's gradient embedding is ``(p - onehot(argmax p)) ⊗ x`` for its features x: the
    last layer's loss gradient if its guess were right. Its length grows with uncertainty,
    and its direction says which features and classes it would move, so k-means++ picks
    (each with chance proportional to the squared distance to the picks so far) are both
    uncertain and unlike one another. Distances use ``<a⊗x, b⊗y> = <a, b><x, y>``, so the
    ``classes x dim`` embeddings are never built. The ``BADGE_CANDIDATES`` items with the
    longest gradients are the candidates, so cost does not grow with the pool; an item
    outside them would almost never be drawn. Utilities are the picks' gradient lengths.
    """
    if pool.probabilities is None:
        return coverage(pool, n)
    probs = pool.probabilities.astype(np.float64)
    residual = probs.copy()
    residual[np.arange(pool.size), probs.argmax(axis=1)] -= 1.0
    residual_sq = (residual**2).sum(axis=1)
    count = min(pool.size, max(BADGE_CANDIDATES, n))
    candidates = np.argpartition(-residual_sq, count - 1)[:count].astype(np.int64)
    features = pool.read_features(candidates).astype(np.float64)
    residual = residual[candidates]
    norms_sq = residual_sq[candidates] * (features**2).sum(axis=1)
    chosen = [int(np.argmax(norms_sq))]
    nearest = np.full(count, np.inf)
    for _ in range(1, n):
        last = chosen[-1]
        inner = (residual @ residual[last]) * (features @ features[last])
        nearest = np.minimum(nearest, np.maximum(norms_sq + norms_sq[last] - 2 * inner, 0.0))
        nearest[chosen] = 0.0
        total = nearest.sum()
        if total <= 0:  # every candidate duplicates a pick: take the longest left
            left = np.setdiff1d(np.arange(count), chosen)
            chosen.append(int(left[np.argmax(norms_sq[left])]))
            continue
        chosen.append(int(pool.rng.choice(count, p=nearest / total)))
    picks = np.array(chosen, dtype=np.int64)
    return candidates[picks], np.sqrt(norms_sq[picks])


MC_PASSES = 20
MC_CHUNK = 65_536


def bald(pool: Pool, n: int) -> Picked:
    """BALD with MC dropout on the head (Houlsby et al. 2011; Gal et al. 2017).

    The head runs ``MC_PASSES`` times with dropout on, over the cached features. An item's
    utility is the mutual information between its label and the head's weights: the
    entropy of the mean prediction minus the mean entropy of the passes. It is high where
    the passes disagree (the model lacks evidence), and low where every pass says 50/50
    (the image is ambiguous, and a label teaches little), which margin and entropy cannot
    tell apart. modAL's BALD (``modAL.dropout``) needs a PyTorch model, so this computes the
    same quantity from the passes. The pool is scored in chunks. Without a sampler (a head
    without dropout) it is entropy sampling; at cold start, :func:`coverage`.
    """
    if pool.probabilities is None:
        return coverage(pool, n)
    if pool.sample_probabilities is None:
        return STRATEGIES["entropy"](pool, n)
    chunks = max(1, -(-pool.size // MC_CHUNK))
    parts = [
        mutual_information(pool.sample_probabilities(chunk, MC_PASSES))
        for chunk in np.array_split(np.arange(pool.size, dtype=np.int64), chunks)
    ]
    return _top(np.concatenate(parts), n)


def mutual_information(passes: NDArray[np.floating]) -> NDArray[np.float64]:
    """BALD's score from ``(passes, items, classes)`` probabilities."""
    probs = np.clip(np.asarray(passes, np.float64), 1e-12, 1.0)
    mean = probs.mean(axis=0)
    entropy_of_mean = -(mean * np.log(mean)).sum(axis=1)
    mean_entropy = -(probs * np.log(probs)).sum(axis=2).mean(axis=0)
    return np.asarray(np.maximum(entropy_of_mean - mean_entropy, 0.0), np.float64)


STRATEGIES: dict[str, Strategy] = {
    "auto": auto,
    "margin": _query(margin_sampling, higher_is_better=False),
    "entropy": _query(entropy_sampling),
    "least_confidence": _query(uncertainty_sampling),
    "diverse": diverse,
    "targeted": targeted,
    "rare-first": rare_first,
    "balanced-margin": balanced_margin,
    "badge": badge,
    "bald": bald,
    "random": random,
}


def get_strategy(name: str) -> Strategy:
    """Look a strategy up by name, or raise an error listing the choices."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"Unknown strategy '{name}'. Choose one of: {', '.join(STRATEGIES)}."
        ) from None


def strategy_for(name: str, balance: bool = False) -> Strategy:
    """The named strategy, wrapped in :class:`ClassBalancer` with ``balance``."""
    strategy = get_strategy(name)
    return ClassBalancer(strategy) if balance else strategy


def parse_strategy(spec: str) -> tuple[str, bool]:
    """``"margin+balance"`` -> ``("margin", True)``, so a plain and a balanced strategy can
    be compared in one simulation; checks the strategy exists."""
    name = spec.removesuffix(BALANCED)
    get_strategy(name)
    return name, name != spec


def even_shares(total: int, parts: int) -> list[int]:
    """Split ``total`` into ``parts`` shares differing by at most one (earlier ones larger)."""
    return [total // parts + (1 if index < total % parts else 0) for index in range(parts)]


@dataclass(frozen=True)
class ClassBalancer:
    """Wraps a strategy so a batch is split evenly over the classes the model predicts,
    and a rare class is not starved; shares a class cannot fill go to the rest of the pool.
    At cold start (no predictions) it is the wrapped strategy."""

    strategy: Strategy

    def __call__(self, pool: Pool, n: int) -> Picked:
        if pool.probabilities is None:
            return self.strategy(pool, n)
        predicted = pool.probabilities.argmax(axis=1)
        parts: list[Picked] = []
        for cls, quota in enumerate(even_shares(n, pool.probabilities.shape[1])):
            members = np.flatnonzero(predicted == cls).astype(np.int64)
            if len(members) and quota:
                parts.append(self._within(pool, members, min(quota, len(members))))
        picked = _concat(parts)
        if len(picked[0]) < n:
            rest = np.setdiff1d(np.arange(pool.size, dtype=np.int64), picked[0])
            picked = _concat([picked, self._within(pool, rest, n - len(picked[0]))])
        return picked

    def _within(self, pool: Pool, members: Positions, n: int) -> Picked:
        local, utilities = self.strategy(pool.subset(members), n)
        return members[local], utilities


def _concat(parts: list[Picked]) -> Picked:
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def select(strategy: Strategy, pool: Pool, n: int) -> Picked:
    """Pick ``min(n, pool size)`` distinct positions with a strategy."""
    n = min(n, pool.size)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return strategy(pool, n)
