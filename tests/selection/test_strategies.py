"""Query strategies on synthetic pools: distinct picks, cold start, balance, diversity."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from al_pipeline.errors import ConfigError
from al_pipeline.selection.strategies import (
    STRATEGIES,
    ClassBalancer,
    Pool,
    Positions,
    _top,
    get_strategy,
    parse_strategy,
    select,
    strategy_for,
)


def make_pool(size: int = 500, classes: int = 2, seed: int = 0, cold: bool = False) -> Pool:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(size, 16)).astype(np.float32)
    logits = rng.normal(size=(size, classes)) * 2
    probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
    return Pool(
        None if cold else probs, lambda p: features[p], size, rng=np.random.default_rng(seed)
    )


def pick(name: str, pool: Pool, n: int, balance: bool = False) -> Positions:
    return select(strategy_for(name, balance), pool, n)[0]


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("cold", [False, True])
def test_every_strategy_returns_n_distinct_positions(name: str, cold: bool) -> None:
    pool = make_pool(cold=cold)
    picked, utilities = select(get_strategy(name), pool, 25)
    assert len(picked) == 25 and len(set(picked.tolist())) == 25
    assert picked.min() >= 0 and picked.max() < pool.size
    assert utilities.shape == (25,)
    assert np.isfinite(utilities).all() == (not cold and name != "random")


def test_batch_larger_than_the_pool_takes_the_whole_pool() -> None:
    assert sorted(pick("margin", make_pool(size=7), 20).tolist()) == list(range(7))


def test_margin_picks_the_smallest_margins() -> None:
    pool = make_pool()
    assert pool.probabilities is not None
    ordered = np.sort(pool.probabilities, axis=1)
    margins = ordered[:, -1] - ordered[:, -2]
    picked, utilities = select(get_strategy("margin"), pool, 10)
    assert set(picked.tolist()) == set(np.argsort(margins)[:10].tolist())
    np.testing.assert_allclose(utilities, 1 - margins[picked], rtol=1e-6)


def test_unknown_strategy_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"Unknown strategy 'foo'\. Choose one of: auto, "):
        strategy_for("foo")


def test_cold_start_covers_every_cluster() -> None:
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 16)) * 20
    sizes = [400, 50, 30, 15, 5]
    features = np.concatenate(
        [c + rng.normal(size=(n, 16)) for c, n in zip(centres, sizes, strict=True)]
    ).astype(np.float32)
    cluster = np.repeat(np.arange(5), sizes)
    pool = Pool(None, lambda p: features[p], len(features), rng=np.random.default_rng(0))
    picked = pick("margin", pool, 5)
    assert sorted(cluster[picked].tolist()) == [0, 1, 2, 3, 4]


def test_balance_spreads_picks_over_predicted_classes() -> None:
    pool = make_pool(size=600, classes=3, seed=2)
    assert pool.probabilities is not None
    predicted = pool.probabilities.argmax(axis=1)
    plain = predicted[pick("margin", pool, 30)]
    balanced = predicted[pick("margin", pool, 30, balance=True)]
    assert np.bincount(balanced, minlength=3).tolist() == [10, 10, 10]
    assert len(set(pick("margin", pool, 30, balance=True).tolist())) == 30
    assert np.bincount(plain, minlength=3).min() <= 10


def test_balance_fills_from_the_rest_when_a_class_is_rare() -> None:
    pool = make_pool(size=300, classes=2, seed=3)
    assert pool.probabilities is not None
    pool.probabilities[:, 0] = 0.9
    pool.probabilities[:, 1] = 0.1
    pool.probabilities[:3] = [0.2, 0.8]
    picked = pick("entropy", pool, 20, balance=True)
    assert len(set(picked.tolist())) == 20 and {0, 1, 2} <= set(picked.tolist())


def test_diverse_does_not_take_many_copies_of_one_hard_image() -> None:
    rng = np.random.default_rng(4)
    features = rng.normal(size=(400, 16)).astype(np.float32) * 5
    features[:40] = features[0] + rng.normal(size=(40, 16)).astype(np.float32) * 0.01
    probs = np.full((400, 2), [0.8, 0.2], dtype=np.float32)
    probs[:40] = [0.51, 0.49]
    probs[40:80] = [0.55, 0.45]
    pool = Pool(probs, lambda p: features[p], 400, features[200:205], np.random.default_rng(0))
    copies_margin = np.sum(pick("margin", pool, 10) < 40)
    copies_diverse = np.sum(pick("diverse", pool, 10) < 40)
    assert copies_margin == 10
    assert copies_diverse <= 3


def test_class_balancer_wraps_any_strategy_and_keeps_its_utilities() -> None:
    pool = make_pool(size=300, classes=3, seed=5)
    assert pool.probabilities is not None
    picked, utilities = ClassBalancer(get_strategy("entropy"))(pool, 9)
    assert np.bincount(pool.probabilities[picked].argmax(axis=1), minlength=3).tolist() == [3] * 3
    entropy = -(pool.probabilities * np.log(pool.probabilities)).sum(axis=1)
    np.testing.assert_allclose(utilities, entropy[picked], rtol=1e-5)


def test_a_balanced_strategy_is_named_with_a_suffix() -> None:
    assert parse_strategy("margin+balance") == ("margin", True)
    assert parse_strategy("random") == ("random", False)
    with pytest.raises(ConfigError, match="Unknown strategy 'nope'"):
        parse_strategy("nope+balance")


def planted_pool() -> tuple[Pool, NDArray[np.bool_]]:
    """480 common items, 20 planted beside the one labelled rare example. The model calls
    them all common; the common ones are the more uncertain, so margin never finds the
    planted ones."""
    rng = np.random.default_rng(4)
    common, rare = rng.normal(size=16) * 5, rng.normal(size=16) * 5
    features = np.concatenate(
        [common + rng.normal(size=(480, 16)), rare + rng.normal(size=(20, 16))]
    ).astype(np.float32)
    planted = np.arange(500) >= 480
    margins = np.where(planted, 0.5, rng.uniform(0.0, 0.4, size=500))
    probs = np.stack([(1 + margins) / 2, (1 - margins) / 2], axis=1).astype(np.float32)
    labelled = np.concatenate([common + rng.normal(size=(30, 16)), rare[None] + 0.1])
    classes = np.array([0] * 30 + [1], dtype=np.int64)
    pool = Pool(probs, lambda p: features[p], 500, labelled.astype(np.float32), rng, classes)
    return pool, planted


def test_targeted_finds_the_items_like_the_rare_labelled_example() -> None:
    pool, planted = planted_pool()
    targeted, utilities = select(get_strategy("targeted"), pool, 20)
    margin, _ = select(get_strategy("margin"), pool, 20)
    assert planted[targeted].sum() >= 18
    assert planted[margin].sum() == 0
    assert np.all(np.diff(utilities) <= 0)  # best first


def test_targeted_without_labelled_features_is_margin() -> None:
    pool = make_pool()
    assert np.array_equal(pick("targeted", pool, 10), pick("margin", pool, 10))


def test_balanced_margin_gives_the_rare_boundary_its_quota() -> None:
    """100 items torn between the two common classes, 10 half-way to the rare class, 390
    sure: margin spends the batch on the common boundary, balanced-margin sends a third
    of it to the rare class's boundary."""
    probs = np.tile(np.array([0.98, 0.01, 0.01], np.float32), (500, 1))
    probs[:100] = [0.5, 0.49, 0.01]
    near_rare = np.zeros(500, dtype=bool)
    near_rare[100:110] = True
    probs[near_rare] = [0.64, 0.01, 0.35]
    features = np.zeros((500, 4), np.float32)
    pool = Pool(probs, lambda p: features[p], 500)
    picked, utilities = select(get_strategy("balanced-margin"), pool, 9)
    assert near_rare[pick("margin", pool, 9)].sum() == 0
    assert near_rare[picked].sum() == 3
    assert (picked < 100).sum() == 6
    np.testing.assert_allclose(utilities[-3:], 1 - 0.29, rtol=1e-5)


def test_badge_takes_one_of_many_copies_and_at_most_one_sure_item() -> None:
    """50 copies of one unsure image, 10 distinct unsure ones and 440 sure ones. Sure items
    have gradients near zero, so they sit together at the origin: k-means++ may take one
    of them as a centre, never two."""
    rng = np.random.default_rng(2)
    features = rng.normal(size=(500, 32)).astype(np.float32)
    features[:50] = features[0]
    probs = np.tile(np.array([0.999, 0.001], np.float32), (500, 1))
    probs[:50] = [0.5, 0.5]
    probs[50:60] = [0.6, 0.4]
    pool = Pool(probs, lambda p: features[p], 500, rng=np.random.default_rng(0))
    picked, utilities = select(get_strategy("badge"), pool, 8)
    assert (picked < 50).sum() == 1
    assert (picked >= 60).sum() <= 1
    assert pick("margin", pool, 8).max() < 50  # margin takes copies only
    assert np.all(utilities > 0)


def test_bald_prefers_disagreeing_passes_to_ambiguous_items() -> None:
    """Items 0-19: every pass says 50/50 (an ambiguous image). Items 20-39: passes flip
    between sure answers (the model lacks evidence). Entropy cannot tell them apart from
    the mean; BALD picks the second kind."""
    size, passes = 200, 20
    samples = np.tile(np.array([0.95, 0.05], np.float32), (passes, size, 1))
    samples[:, :20] = [0.5, 0.5]
    flips = np.arange(passes) % 2 == 0
    samples[flips, 20:40] = [0.97, 0.03]
    samples[~flips, 20:40] = [0.03, 0.97]
    mean = samples.mean(axis=0)
    features = np.zeros((size, 4), np.float32)

    def sampler(positions: Positions, count: int) -> NDArray[np.float32]:
        assert count == passes
        return samples[:, positions]

    pool = Pool(mean, lambda p: features[p], size, sample_probabilities=sampler)
    picked, utilities = select(get_strategy("bald"), pool, 20)
    assert set(picked.tolist()) == set(range(20, 40))
    assert np.all(utilities > 0.4) and np.all(np.diff(utilities) <= 0)
    bald_of_subset, _ = select(get_strategy("bald"), pool.subset(np.arange(10, 30)), 5)
    assert set(bald_of_subset.tolist()) <= set(range(10, 20))  # local positions 10-19
    without_sampler = Pool(mean, lambda p: features[p], size)
    assert np.array_equal(pick("bald", without_sampler, 20), pick("entropy", without_sampler, 20))


def rare_pool(counts: list[int] | None) -> tuple[Pool, NDArray[np.bool_]]:
    """The rare-first pool: 20 likely rare items (200-219), 100 torn between the commons."""
    probs = np.tile(np.array([0.9, 0.08, 0.02], np.float32), (500, 1))
    probs[:100] = [0.48, 0.47, 0.05]
    likely = np.zeros(500, dtype=bool)
    likely[200:220] = True
    probs[likely] = [0.1, 0.3, 0.6]
    features = np.zeros((500, 4), np.float32)
    label_counts = None if counts is None else np.array(counts, np.int64)
    return Pool(probs, lambda p: features[p], 500, label_counts=label_counts), likely


def test_rare_first_takes_half_the_batch_from_the_likeliest_rare_items() -> None:
    """20 items the model gives 0.6 for the rare class (sure, so margin passes them by),
    100 torn between the common classes, the rest sure commons."""
    pool, likely = rare_pool(None)
    picked, utilities = select(get_strategy("rare-first"), pool, 11)
    assert likely[picked[:6]].all() and (picked[6:] < 100).all()
    np.testing.assert_allclose(utilities[:6], 0.6, rtol=1e-6)
    assert likely[pick("margin", pool, 11)].sum() == 0


@pytest.mark.parametrize(
    ("counts", "searched"),
    [
        ([50, 50, 0], 10),  # no label of the rare class: the whole batch searches for it
        ([45, 45, 10], 4),  # 10 % of the labels: 1 - 2*3*0.1 = 40 % of the batch
        ([40, 40, 20], 0),  # 20 % >= 1/6: plain margin
        ([34, 33, 33], 0),
    ],
)
def test_auto_searches_for_a_class_in_proportion_to_its_shortfall(
    counts: list[int], searched: int
) -> None:
    pool, likely = rare_pool(counts)
    picked, utilities = select(get_strategy("auto"), pool, 10)
    assert likely[picked[:searched]].all() and (picked[searched:] < 100).all()
    np.testing.assert_allclose(utilities[:searched], 0.6, rtol=1e-6)
    if not searched:
        assert np.array_equal(picked, pick("margin", pool, 10))


def test_auto_searches_for_the_class_short_of_labels_not_the_least_expected() -> None:
    """Class 1 is short of labels, though the model expects less of class 2."""
    pool, _ = rare_pool([60, 2, 38])
    assert pool.probabilities is not None
    picked, _ = select(get_strategy("auto"), pool, 10)
    searched = np.argsort(-pool.probabilities[:, 1], kind="stable")[:9]
    assert set(picked[:9].tolist()) == set(searched.tolist())


def test_equal_utilities_are_picked_in_pool_order_on_any_processor() -> None:
    """argpartition orders ties by the CPU's vector instructions (AVX-512 or not); the
    picks must not. 100 items tie for the top; the first ones by position are taken."""
    pool, _ = rare_pool([60, 2, 38])
    assert pool.probabilities is not None
    picked, _ = select(get_strategy("auto"), pool, 10)
    assert picked[:9].tolist() == list(range(9))
    utility = np.array([0.5, np.nan, 0.9, 0.5, 0.5, 0.1, np.nan])
    assert _top(utility, 3)[0].tolist() == [2, 0, 3]
    assert _top(utility, 7)[0].tolist() == [2, 0, 3, 4, 5, 1, 6]


def test_auto_without_label_counts_is_margin() -> None:
    pool, _ = rare_pool(None)
    assert np.array_equal(pick("auto", pool, 10), pick("margin", pool, 10))
    empty, _ = rare_pool([0, 0, 0])
    assert np.array_equal(pick("auto", empty, 10), pick("margin", empty, 10))
