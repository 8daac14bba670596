"""Seeded, deterministic train/test splits that never cut a group (a walk/path) in two.

Consecutive scans of one walk are nearly identical, so a random-row split
leaks the test positions into training and flatters every model; all splits
here move whole groups. Results depend only on the group labels, the seed and
the arguments — not on row order or on the process (no global RNG, no hash
randomisation) — and are sorted int64 index arrays.

Rows whose group is None (or NaN) are groups of their own: when no row has a
path (UJIIndoorLoc, single scans posted to the API) this degenerates to a
plain seeded row split, the only option there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from ml.data.features import FingerprintSet

_SUBSET_STREAM = 0x5B5E7  # decorrelates train_fraction_subset from split_by_group for the same seed
_DAY_MS = 86_400_000

Labels = Sequence[Any] | np.ndarray


def split_by_group(groups: Labels, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, test_idx) with round(test_fraction * n_groups) whole groups, chosen at random, in test.

    The fraction counts groups, not rows. With at least two groups and
    0 < test_fraction < 1, both sides get at least one group.
    """
    codes, n_groups = group_codes(groups)
    n_test = _count(test_fraction, n_groups, keep_both=True)
    perm = np.random.default_rng(seed).permutation(n_groups)
    return _by_group_mask(codes, perm[:n_test])


def split_by_time(timestamps: Labels, groups: Labels, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """The earliest groups (by their first timestamp) to train, the latest round(test_fraction*n) to test.

    Models "survey now, serve later": the test set is what a deployment sees
    after training. Ties in first timestamp are broken by group label.
    """
    codes, n_groups = group_codes(groups)
    first = _group_first(_timestamps(timestamps, len(codes)), codes, n_groups)
    order = np.lexsort((np.arange(n_groups), first))  # by time, then by label order
    n_test = _count(test_fraction, n_groups, keep_both=True)
    return _by_group_mask(codes, order[n_groups - n_test :])


def split_by_day(
    timestamps: Labels, groups: Labels, n_train_days: int, utc_offset_ms: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Groups first seen on the earliest `n_train_days` collection days to train, the rest to test.

    A group's day is the calendar day of its first timestamp (unix ms, shifted
    by `utc_offset_ms`, e.g. 8 * 3_600_000 for the ILC traces recorded in
    UTC+8) — so a walk across midnight stays whole. Days without data do not
    count. If there are no more than `n_train_days` days, test is empty.
    """
    if n_train_days < 1:
        raise ValueError("n_train_days must be >= 1")
    codes, n_groups = group_codes(groups)
    first = _group_first(_timestamps(timestamps, len(codes)), codes, n_groups)
    day = (first + utc_offset_ms) // _DAY_MS
    train_days = np.unique(day)[:n_train_days]
    test_groups = np.flatnonzero(~np.isin(day, train_days))
    return _by_group_mask(codes, test_groups)


def split_by_value(values: Labels, test_values: Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose value is in `test_values` to test, the others to train (e.g. by device or user).

    Values are compared as strings, so PHONEID 13 matches "13"; None only
    matches None.
    """
    wanted = {None if v is None else str(v) for v in test_values}
    mask = np.array([(None if v is None else str(v)) in wanted for v in values], dtype=bool)
    return _indices(~mask), _indices(mask)


def train_fraction_subset(groups: Labels, fraction: float, seed: int) -> np.ndarray:
    """Rows of a seeded subset of max(1, round(fraction * n_groups)) whole groups.

    Subsets are nested for one seed: the groups are taken as a prefix of one
    seeded permutation, so the 12.5% subset lies inside the 25% one, and so
    on — the transfer curves (paper 000 Table V) then differ only by the data
    added. round() is half-up (2.5 -> 3), not Python's banker's rounding.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    codes, n_groups = group_codes(groups)
    if n_groups == 0:
        return np.empty(0, dtype=np.int64)
    k = max(1, _round_half_up(fraction * n_groups))
    perm = np.random.default_rng([seed, _SUBSET_STREAM]).permutation(n_groups)
    return _by_group_mask(codes, perm[:k])[1]


# ---------------------------------------------------------------------------- the holdout of a fit

HOLDOUT_BY = ("auto", "path", "position", "user", "device", "rows")


class Holdout(NamedTuple):
    fit: np.ndarray  # sorted int64 row indices trained on
    hold: np.ndarray  # sorted int64 row indices held out (validation, selection, calibration, metrics)
    by: str  # the grouping used: path, position, user, device or rows


def holdout_groups(fs: FingerprintSet, by: str) -> tuple[np.ndarray | None, str]:
    """Group label per row for a holdout, and the name of the grouping used (None: single rows).

    "auto" = whole paths when every row has one, else survey positions (floor + x, y to 0.1 m):
    scans taken at one spot are near-duplicates, so scoring a row against its own spot's
    siblings would reward memorising and leak.
    """
    if by not in HOLDOUT_BY:
        raise ValueError(f"holdout_by must be one of {', '.join(HOLDOUT_BY)}")
    if by == "rows":
        return None, "rows"
    order = ("path", "position") if by == "auto" else (by,)
    for name in order:
        if name == "position":
            keys = [f"{b}|{f}|{x:.1f}|{y:.1f}" for b, f, (x, y) in zip(fs.building, fs.floor, fs.xy, strict=True)]
            col = np.array(keys, dtype=object)
        else:
            col = getattr(fs, name)
        if all(v is not None for v in col) and len(set(col.tolist())) >= 2:
            return col, name
    return None, "rows"


def holdout_split(fs: FingerprintSet, fraction: float, seed: int, by: str = "auto") -> Holdout:
    """The one holdout splitter of every fit (the finetune pipeline, the models' own validation, the benchmarks).

    Per floor, a seeded `fraction` of its groups (whole paths, else survey positions, see `holdout_groups`)
    held out, at least one group of every floor kept to fit. Unstratified, a small survey can lose a whole
    floor to the holdout, which then rewards an untrained network. Nothing is held out when `fraction` is 0
    or the set has fewer than 10 rows.
    """
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    col, name = holdout_groups(fs, by)
    if fraction == 0 or len(fs) < 10:
        return Holdout(np.arange(len(fs), dtype=np.int64), np.empty(0, dtype=np.int64), name)
    groups = np.arange(len(fs)).astype(str).astype(object) if col is None else col
    rng = np.random.default_rng(seed)
    hold = np.zeros(len(fs), dtype=bool)
    keys = fs.floor_key
    for key in sorted(set(keys.tolist())):
        rows = keys == key
        uniq = sorted(set(groups[rows].tolist()))
        n_hold = min(len(uniq) - 1, round(fraction * len(uniq)))
        if n_hold > 0:
            hold |= rows & np.isin(groups, rng.choice(np.array(uniq, dtype=object), size=n_hold, replace=False))
    return Holdout(_indices(~hold), _indices(hold), name)


# ---------------------------------------------------------------------------- helpers


def group_codes(groups: Labels) -> tuple[np.ndarray, int]:
    """(code per row, number of groups). Named groups get codes 0.. in sorted label order;
    each None/NaN row then gets its own code, in row order."""
    labels = [None if _missing(g) else str(g) for g in groups]
    names = sorted({g for g in labels if g is not None})
    index = {g: i for i, g in enumerate(names)}
    codes = np.empty(len(labels), dtype=np.int64)
    nxt = len(names)
    for i, g in enumerate(labels):
        if g is None:
            codes[i] = nxt
            nxt += 1
        else:
            codes[i] = index[g]
    return codes, nxt


def _missing(g: object) -> bool:
    return g is None or (isinstance(g, float) and math.isnan(g))


def _count(fraction: float, n: int, keep_both: bool) -> int:
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    k = _round_half_up(fraction * n)
    if keep_both and n >= 2 and 0 < fraction < 1:
        k = min(max(k, 1), n - 1)
    return k


def _round_half_up(v: float) -> int:
    return math.floor(v + 0.5 + 1e-9)  # epsilon: 0.35 * 10 is 3.4999999999999996 in floats and must give 4


def _timestamps(timestamps: Labels, n: int) -> np.ndarray:
    try:
        ts = np.asarray(timestamps, dtype=np.int64)
    except (TypeError, ValueError):
        raise ValueError("timestamps must all be known integers (unix ms)") from None
    if ts.shape != (n,):
        raise ValueError(f"timestamps has shape {ts.shape}, groups has {n} rows")
    if (ts < 0).any():
        raise ValueError("timestamps must all be known (>= 0); -1 marks unknown in FingerprintSet")
    return ts


def _group_first(ts: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    first = np.full(n_groups, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, codes, ts)
    return first


def _by_group_mask(codes: np.ndarray, test_groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = np.isin(codes, test_groups)
    return _indices(~mask), _indices(mask)


def _indices(mask: np.ndarray) -> np.ndarray:
    return np.flatnonzero(mask).astype(np.int64)
