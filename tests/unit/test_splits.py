"""Seeded group-preserving splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml.data.ilc2020 import read_ilc_fingerprints
from ml.data.splits import (
    group_codes,
    split_by_day,
    split_by_group,
    split_by_time,
    split_by_value,
    train_fraction_subset,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DAY = 86_400_000


def _groups(n_groups: int = 20, per: int = 5, seed: int = 0) -> np.ndarray:
    """Rows of n_groups paths, `per` rows each, shuffled (so no split can rely on row order)."""
    g = np.repeat([f"path{i:02d}" for i in range(n_groups)], per).astype(object)
    return g[np.random.default_rng(seed).permutation(len(g))]


def _assert_partition(train: np.ndarray, test: np.ndarray, n: int) -> None:
    assert train.dtype == np.int64 and test.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)  # sorted, unique
    assert np.intersect1d(train, test).size == 0
    assert np.array_equal(np.union1d(train, test), np.arange(n))


def _assert_groups_whole(groups: np.ndarray, train: np.ndarray, test: np.ndarray) -> None:
    assert not set(groups[train]) & set(groups[test])


def test_split_by_group_keeps_groups_whole_and_counts_groups() -> None:
    g = _groups()
    train, test = split_by_group(g, 0.25, seed=1)
    _assert_partition(train, test, len(g))
    _assert_groups_whole(g, train, test)
    assert len(set(g[test])) == 5  # round(0.25 * 20) groups


def test_split_by_group_is_deterministic_and_seeded() -> None:
    g = _groups()
    a = split_by_group(g, 0.3, seed=7)
    b = split_by_group(g, 0.3, seed=7)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    picks = {tuple(sorted(set(g[split_by_group(g, 0.3, seed=s)[1]]))) for s in range(10)}
    assert len(picks) > 5


def test_split_by_group_does_not_depend_on_row_order() -> None:
    g1, g2 = _groups(seed=1), _groups(seed=2)
    t1 = set(g1[split_by_group(g1, 0.4, seed=3)[1]])
    t2 = set(g2[split_by_group(g2, 0.4, seed=3)[1]])
    assert t1 == t2


def test_split_by_group_without_groups_splits_rows() -> None:
    train, test = split_by_group([None] * 40, 0.25, seed=0)
    _assert_partition(train, test, 40)
    assert len(test) == 10


def test_split_by_group_none_rows_are_singletons_beside_named_groups() -> None:
    g = np.array(["a", "a", None, "b", "b", None, float("nan")], dtype=object)
    codes, n = group_codes(g)
    assert n == 5 and codes[0] == codes[1] and len({codes[2], codes[5], codes[6]}) == 3
    train, test = split_by_group(g, 0.5, seed=0)
    _assert_partition(train, test, len(g))
    assert (0 in test) == (1 in test) and (3 in test) == (4 in test)


@pytest.mark.parametrize(("fraction", "n_test"), [(0.0, 0), (0.01, 1), (0.99, 3), (1.0, 4)])
def test_split_by_group_edges_keep_both_sides_when_fraction_strictly_inside(fraction: float, n_test: int) -> None:
    g = np.array(list("aabbccdd"), dtype=object)
    assert len(set(g[split_by_group(g, fraction, seed=0)[1]])) == n_test


def test_split_by_group_rejects_bad_fraction() -> None:
    with pytest.raises(ValueError):
        split_by_group(["a", "b"], 1.5, seed=0)


def test_split_by_time_puts_latest_groups_in_test() -> None:
    g = np.repeat(np.array(list("abcdefghij"), dtype=object), 3)
    start = np.repeat(np.array([9, 1, 5, 3, 7, 2, 8, 4, 6, 0]) * 10_000, 3)
    ts = start + np.tile([0, 100, 200], 10)
    train, test = split_by_time(ts, g, 0.3)
    _assert_partition(train, test, len(g))
    _assert_groups_whole(g, train, test)
    assert set(g[test]) == {"a", "g", "e"}  # the three groups starting last (9, 8, 7)
    assert ts[train].max() < ts[test].min()


def test_split_by_time_rejects_unknown_timestamps() -> None:
    with pytest.raises(ValueError, match="known"):
        split_by_time([1, -1], ["a", "b"], 0.5)
    with pytest.raises(ValueError, match="known"):
        split_by_time([1, None], ["a", "b"], 0.5)


def test_split_by_day_trains_on_earliest_days() -> None:
    base = 1_574_553_600_000  # 2019-11-24 00:00 UTC
    g = np.array(["a", "a", "b", "c", "c", "d"], dtype=object)
    # c starts at 23:59 on day 2 and runs past midnight: it stays whole, on day 2; day 3 is not a collection day
    ts = np.array([base, base + 10, base + DAY + 5, base + 3 * DAY - 60_000, base + 3 * DAY + 60_000, base + 5 * DAY])
    train, test = split_by_day(ts, g, n_train_days=2)
    _assert_partition(train, test, len(g))
    assert set(g[train]) == {"a", "b"} and set(g[test]) == {"c", "d"}
    train, test = split_by_day(ts, g, n_train_days=3)
    assert set(g[train]) == {"a", "b", "c"} and set(g[test]) == {"d"}
    assert split_by_day(ts, g, n_train_days=10)[1].size == 0
    with pytest.raises(ValueError):
        split_by_day(ts, g, n_train_days=0)


def test_split_by_day_local_time_offset() -> None:
    base = 1_574_553_600_000
    g = np.array(["x", "y"], dtype=object)
    ts = np.array([base + 20 * 3_600_000, base + DAY + 3_600_000])  # 20:00 UTC day 0, 01:00 UTC day 1
    assert set(g[split_by_day(ts, g, 1)[0]]) == {"x"}
    # in UTC+8 both are on the same local day
    assert set(g[split_by_day(ts, g, 1, utc_offset_ms=8 * 3_600_000)[0]]) == {"x", "y"}


def test_split_by_value_compares_as_strings() -> None:
    phones = [13, 14, 13, 19, None, 7]
    train, test = split_by_value(phones, ["13", 19])
    assert test.tolist() == [0, 2, 3] and train.tolist() == [1, 4, 5]
    assert split_by_value(phones, [None])[1].tolist() == [4]


def test_train_fraction_subsets_are_nested_whole_groups() -> None:
    g = _groups(n_groups=24)
    previous: set[str] = set()
    for fraction, expected in [(0.125, 3), (0.25, 6), (0.5, 12), (0.75, 18), (1.0, 24)]:
        idx = train_fraction_subset(g, fraction, seed=5)
        assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)
        chosen = set(g[idx])
        assert len(chosen) == expected
        assert len(idx) == 5 * expected  # whole groups
        assert previous <= chosen
        previous = chosen
    assert np.array_equal(train_fraction_subset(g, 1.0, seed=5), np.arange(len(g)))


def test_train_fraction_subset_rounding_and_minimum() -> None:
    g = _groups(n_groups=10)
    assert len(set(g[train_fraction_subset(g, 0.01, seed=0)])) == 1  # at least one group
    assert len(set(g[train_fraction_subset(g, 0.25, seed=0)])) == 3  # 2.5 rounds half up
    assert len(set(g[train_fraction_subset(g, 0.35, seed=0)])) == 4  # 3.4999999999999996 -> 4
    with pytest.raises(ValueError):
        train_fraction_subset(g, 0.0, seed=0)
    assert train_fraction_subset([], 0.5, seed=0).size == 0


def test_train_fraction_subset_depends_on_seed() -> None:
    g = _groups(n_groups=24)
    assert len({tuple(train_fraction_subset(g, 0.25, seed=s)) for s in range(8)}) > 4


def test_splits_on_ilc_fixture_paths() -> None:
    fps = list(read_ilc_fingerprints(FIXTURES / "ilc_site1_F1_small.tar.xz"))
    paths = np.array([fp.path for fp in fps], dtype=object)
    train, test = split_by_group(paths, 0.25, seed=0)
    _assert_partition(train, test, len(fps))
    _assert_groups_whole(paths, train, test)
    assert len(set(paths[test])) == 1 and len(set(paths[train])) == 3
    ts = np.array([fp.timestamp for fp in fps])
    train, test = split_by_time(ts, paths, 0.25)
    assert ts[test].min() > max(ts[paths == p].min() for p in set(paths[train]))
