"""Hierarchical weighted k-nearest-neighbour fingerprinting: the classical baseline.

A query is matched against every survey fingerprint; the building is voted by
the `k_building` nearest, the floor by the `k_floor` nearest inside that
building, and the position is the (inverse-)distance-weighted mean of the `k`
nearest on that floor.

RSS values are re-expressed as in Torres-Sospedra et al. (2015), "Comprehensive
analysis of distance and similarity measures for Wi-Fi fingerprinting indoor
positioning systems": `positive`, `exponential` or `powed` with "not heard" = 0,
or `raw` dB with "not heard" = -110 dBm (stored shifted by +110 dB, which leaves
Euclidean and Manhattan distances unchanged and keeps "not heard" = 0). Because
"not heard" is 0 in every representation, every distance reduces to per-row sums
plus sum_j min(x_j, q_j) and sum_j x_j q_j over the APs the query heard only
(e.g. Sørensen = (sx + sq - 2 sum min) / (sx + sq)): a query reads (APs heard x
fingerprints) values of an AP-major matrix, not (vocabulary x fingerprints).

`fit` tunes representation, distance, the three k's, the weighting and (for data
with entry ages) the stale-entry cutoff on a group holdout of the training data
only (see `Tuner`), then refits on all of it. Candidates are ranked by
`mean 2-D error + floor_penalty_m x floor-miss rate` (15 m per missed floor, the
IPIN/EvAAL and ILC 2020 convention), so a setting cannot buy position accuracy
with wrong floors.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, ClassVar

import numpy as np

from ml.data.features import FingerprintSet
from ml.data.splits import HOLDOUT_BY, Holdout, holdout_split
from ml.errors import InsufficientData, InvalidParams
from ml.models.base import LocModel, Prediction, ProgressFn, QueryBatch, no_progress
from ml.params import settings_from

REPRESENTATIONS = ("positive", "exponential", "powed", "raw")
DISTANCES = ("euclidean", "manhattan", "sorensen", "cosine")
WEIGHTINGS = ("uniform", "inverse", "inverse_square")
RAW_NOT_HEARD_DBM = -110.0
AGE_GRID_MS: tuple[float | None, ...] = (None, 2000.0, 5000.0, 10000.0, 20000.0)
K_GRID = tuple(range(1, 16))
VOTE_K_GRID = (1, 3, 5, 7, 9, 11, 15)
SPREAD_K = 10  # the error estimate looks at the spread of this many nearest on the chosen floor
DIST_K = 5  # ... and at the mean distance of this many
_EPS = 1e-6  # keeps inverse weights finite for exact matches
_CHUNK_CELLS = 2_000_000  # queries x fingerprints per distance block (16 MB of float64)


@dataclass(frozen=True)
class WKNNParams:
    """Settings; every field can be pinned through `params`, the rest are tuned when `tune`."""

    representation: str = "powed"
    distance: str = "sorensen"
    k: int = 5  # neighbours averaged for the position
    k_building: int = 5  # neighbours voting for the building
    k_floor: int = 5  # neighbours (inside the voted building) voting for the floor
    weighting: str = "inverse"  # "uniform" | "inverse" (1/d) | "inverse_square" (1/d^2), votes and position
    max_age_ms: float | None = None  # scan entries older than this are "not heard" (train and query)
    min_rss: float | None = None  # representation floor in dBm; None = weakest training reading - 1 dB
    exp_alpha: float = 24.0  # `exponential` representation
    pow_beta: float = math.e  # `powed` representation
    tune: bool = True
    calibrate: bool = True  # calibrate error_m on the holdout even when not tuning
    holdout_fraction: float = 0.2
    holdout_by: str = "auto"  # tuning holdout groups: see `holdout_groups`
    max_tune_queries: int = 2000  # holdout queries scored per candidate (seeded subsample)
    floor_penalty_m: float = 15.0  # tuning score: metres added per floor miss
    # Keep the robust default (powed + Sørensen, the literature's choice across phones and months) unless
    # another representation/distance scores better by more than this fraction on the tuning holdout: a
    # holdout cut from one survey cannot see the device and time shift that real queries bring.
    prefer_default_within: float = 0.05

    @classmethod
    def parse(cls, params: dict[str, Any]) -> tuple[WKNNParams, frozenset[str]]:
        """Validated params plus the names the caller pinned."""
        out = settings_from(cls, params, "wknn")
        out.validate()
        return out, frozenset(params)

    def validate(self) -> None:
        _check_choice("representation", self.representation, REPRESENTATIONS)
        _check_choice("distance", self.distance, DISTANCES)
        _check_choice("weighting", self.weighting, WEIGHTINGS)
        _check_choice("holdout_by", self.holdout_by, HOLDOUT_BY)
        for name in ("k", "k_building", "k_floor", "max_tune_queries"):
            if int(getattr(self, name)) < 1:
                raise InvalidParams(f"wknn param {name} must be >= 1")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise InvalidParams("wknn param holdout_fraction must be in (0, 1)")
        if self.min_rss is not None and self.min_rss >= 0:
            raise InvalidParams("wknn param min_rss must be negative (dBm)")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InvalidParams(f"wknn param {name}={value!r}; choose from {', '.join(choices)}")


# ---------------------------------------------------------------- representation


def represent(rss: np.ndarray, p: WKNNParams, min_rss: float) -> np.ndarray:
    """Heard readings (dBm) -> strictly positive feature values ("not heard" is 0 everywhere)."""
    if p.representation == "raw":
        return np.maximum(rss.astype(np.float64), RAW_NOT_HEARD_DBM + 1.0) - RAW_NOT_HEARD_DBM
    positive = np.maximum(rss.astype(np.float64), min_rss + 1.0) - min_rss
    if p.representation == "positive":
        return positive
    if p.representation == "exponential":
        return np.asarray(np.exp(positive / p.exp_alpha) / np.exp(-min_rss / p.exp_alpha))
    return np.asarray((positive / -min_rss) ** p.pow_beta)


@dataclass
class SparseRows:
    """CSR rows of heard readings: row i holds cols[indptr[i]:indptr[i+1]], values in dBm."""

    indptr: np.ndarray  # (n+1,) int64
    cols: np.ndarray  # (nnz,) int64
    rss: np.ndarray  # (nnz,) float32 dBm

    @classmethod
    def from_dense(cls, rss: np.ndarray) -> SparseRows:
        heard = ~np.isnan(rss)
        rows, cols = np.nonzero(heard)
        indptr = np.zeros(rss.shape[0] + 1, dtype=np.int64)
        np.cumsum(heard.sum(axis=1), out=indptr[1:])
        return cls(indptr, cols.astype(np.int64), rss[rows, cols].astype(np.float32))

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def row_ids(self) -> np.ndarray:
        return np.repeat(np.arange(len(self), dtype=np.int64), np.diff(self.indptr))

    def take(self, idx: np.ndarray) -> SparseRows:
        counts = np.diff(self.indptr)[idx]
        flat = _ranges(self.indptr[idx], counts)
        indptr = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return SparseRows(indptr, self.cols[flat], self.rss[flat])


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + c) for every (s, c), without a Python loop."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shift = np.repeat(starts - (np.cumsum(counts) - counts), counts)
    return shift + np.arange(total, dtype=np.int64)


class SparseIndex:
    """Training fingerprints in one representation, as AP-major posting lists (an inverted index).

    `ap_ptr[j]:ap_ptr[j+1]` are the fingerprints that heard AP j (`ap_rows`) and their values (`ap_vals`).
    A query only touches the postings of the APs it heard (about 1/20 of a dense (APs heard x n) block on
    UJIIndoorLoc), and a whole batch is accumulated with one `bincount` rather than a Python loop per query.
    """

    def __init__(self, rows: SparseRows, n_cols: int, p: WKNNParams, min_rss: float) -> None:
        self.n = len(rows)
        values = represent(rows.rss, p, min_rss)
        row_ids = rows.row_ids()
        order = np.lexsort((row_ids, rows.cols))  # by AP, then by fingerprint
        self.ap_ptr = np.zeros(n_cols + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows.cols, minlength=n_cols), out=self.ap_ptr[1:])
        self.ap_rows = row_ids[order]
        self.ap_vals = values[order].astype(np.float32)
        self.sum1 = np.bincount(row_ids, weights=values, minlength=self.n)
        self.sum2 = np.bincount(row_ids, weights=values * values, minlength=self.n)

    def overlap(
        self, q: SparseRows, qvals: np.ndarray, need_min: bool = True, need_dot: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """(sum_j min(x_j, q_j), sum_j x_j q_j) over each query's heard APs: two (b, n) arrays
        (zeros for the one not asked for).

        Each (query, heard AP) pair adds its AP's posting list into the query's row in place (a posting list
        names a fingerprint once, so a fancy-indexed `+=` is exact): about half the CPU of building one
        (query, fingerprint) key per posting for a single `bincount`, at every batch size. Sums run in
        float64, AP by AP in the query's order."""
        b = len(q)
        mins = np.zeros((b, self.n) if need_min else (0, self.n))
        dots = np.zeros((b, self.n) if need_dot else (0, self.n))
        ptr, rows, vals = self.ap_ptr, self.ap_rows, self.ap_vals
        starts, ends = ptr[q.cols].tolist(), ptr[q.cols + 1].tolist()
        v32 = qvals.astype(np.float32)
        indptr = q.indptr.tolist()
        for i in range(b):
            acc_min = mins[i] if need_min else None
            acc_dot = dots[i] if need_dot else None
            for t in range(indptr[i], indptr[i + 1]):
                lo, hi = starts[t], ends[t]
                r, x, v = rows[lo:hi], vals[lo:hi], v32[t]
                if acc_min is not None:
                    acc_min[r] += np.minimum(x, v)
                if acc_dot is not None:
                    acc_dot[r] += x * v
        return mins, dots


def distances(
    kind: str, index: SparseIndex, mins: np.ndarray, dots: np.ndarray, q_sum1: np.ndarray, q_sum2: np.ndarray
) -> np.ndarray:
    """(b, n) float32 distances from the sparse overlap terms ("not heard" = 0 on both sides)."""
    if kind in ("manhattan", "sorensen"):
        out = mins * -2.0  # |a - b| = a + b - 2 min(a, b) for a, b >= 0
        out += index.sum1[None, :]
        out += q_sum1[:, None]
        np.maximum(out, 0.0, out=out)
        if kind == "sorensen":
            out /= np.maximum(index.sum1[None, :] + q_sum1[:, None], _EPS)
    elif kind == "euclidean":
        out = dots * -2.0
        out += index.sum2[None, :]
        out += q_sum2[:, None]
        np.maximum(out, 0.0, out=out)
        np.sqrt(out, out=out)
    else:
        out = dots / np.maximum(np.sqrt(index.sum2)[None, :] * np.sqrt(q_sum2)[:, None], _EPS)
        np.subtract(1.0, out, out=out)
        np.maximum(out, 0.0, out=out)
    return out.astype(np.float32)


# ---------------------------------------------------------------- hierarchical decision


@dataclass
class Candidates:
    """Per query and floor group, the K nearest fingerprints sorted by distance (inf / -1 padded)."""

    dist: np.ndarray  # (b, G, K) float64
    idx: np.ndarray  # (b, G, K) int64 row ids


def nearest_per_group(dist: np.ndarray, bounds: np.ndarray, k: int) -> Candidates:
    """Rows are sorted by floor group; group g is columns bounds[g]:bounds[g+1]."""
    b, n_groups = dist.shape[0], len(bounds) - 1
    out_d = np.full((b, n_groups, k), np.inf, dtype=np.float64)
    out_i = np.full((b, n_groups, k), -1, dtype=np.int64)
    rows = np.arange(b)[:, None]  # plain fancy indexing: take_along_axis costs more per call than it does here
    for g in range(n_groups):
        lo, hi = int(bounds[g]), int(bounds[g + 1])
        kk = min(k, hi - lo)
        if kk == 0:
            continue
        block = dist[:, lo:hi]
        part = np.argpartition(block, kk - 1, axis=1)[:, :kk] if kk < hi - lo else np.tile(np.arange(kk), (b, 1))
        part_d = block[rows, part]
        order = np.argsort(part_d, axis=1, kind="stable")
        out_d[:, g, :kk] = part_d[rows, order]
        out_i[:, g, :kk] = part[rows, order] + lo
    return Candidates(out_d, out_i)


def weights(d: np.ndarray, weighting: str) -> np.ndarray:
    """Neighbour weights; 0 for padding (inf distance)."""
    finite = np.isfinite(d)
    safe = np.where(finite, d, 1.0)
    if weighting == "uniform":
        w = np.ones_like(safe)
    elif weighting == "inverse":
        w = 1.0 / (safe + _EPS)
    else:
        w = 1.0 / (safe + _EPS) ** 2
    return np.where(finite, w, 0.0)


def _vote(d: np.ndarray, labels: np.ndarray, n_labels: int, weighting: str) -> np.ndarray:
    """Weighted vote over sorted neighbours; a tiny rank bonus breaks ties toward the nearer label."""
    b, kv = d.shape
    w = weights(d, weighting) * (1.0 + 1e-6 / (1.0 + np.arange(kv)))[None, :]
    key = np.arange(b)[:, None] * n_labels + labels
    scores = np.bincount(key.ravel(), weights=w.ravel(), minlength=b * n_labels).reshape(b, n_labels)
    return np.asarray(np.argmax(scores, axis=1))


def _top(flat_d: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, flat_d.shape[1])
    part = np.argpartition(flat_d, k - 1, axis=1)[:, :k]
    part_d = np.take_along_axis(flat_d, part, axis=1)
    order = np.argsort(part_d, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_d, order, axis=1)


def choose_building(c: Candidates, group_building: np.ndarray, k_b: int, weighting: str) -> np.ndarray:
    """(b, G) mask of the floor groups inside each query's voted building."""
    b, n_groups, kk = c.dist.shape
    n_buildings = int(group_building.max()) + 1
    if n_buildings == 1:
        return np.ones((b, n_groups), dtype=bool)
    top, top_d = _top(c.dist.reshape(b, -1), k_b)
    chosen = _vote(top_d, group_building[top // kk], n_buildings, weighting)
    return np.asarray(group_building[None, :] == chosen[:, None])


def choose_floor(c: Candidates, allowed: np.ndarray, k_f: int, weighting: str) -> np.ndarray:
    """(b,) floor group voted by the k_f nearest inside the allowed groups."""
    b, n_groups, kk = c.dist.shape
    if n_groups == 1:
        return np.zeros(b, dtype=np.int64)
    masked = np.where(allowed[:, :, None], c.dist, np.inf).reshape(b, -1)
    top, top_d = _top(masked, k_f)
    return _vote(top_d, top // kk, n_groups, weighting)


def positions_all_k(
    c: Candidates, group: np.ndarray, xy: np.ndarray, weighting: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted-mean positions for every k = 1..K at once (cumulative sums over sorted neighbours).

    Returns (positions (b, K, 2), neighbour positions (b, K, 2), weights (b, K)).
    """
    ar = np.arange(len(group))
    d = c.dist[ar, group]
    idx = c.idx[ar, group]
    w = weights(d, weighting)
    pts = xy[np.maximum(idx, 0)]
    cum_w = np.maximum(np.cumsum(w, axis=1), 1e-300)
    cum_p = np.cumsum(w[:, :, None] * pts, axis=1)
    return cum_p / cum_w[:, :, None], pts, w


def error_features(
    c: Candidates, group: np.ndarray, xy: np.ndarray, k: int, weighting: str
) -> tuple[np.ndarray, np.ndarray]:
    """Position for k, and the features of its error estimate (b, 3):
    [1, log(1 + spread of the SPREAD_K nearest around it, m), log(mean distance of the DIST_K nearest)]."""
    pos_all, pts, _ = positions_all_k(c, group, xy, weighting)
    pos = pos_all[:, min(k, pts.shape[1]) - 1]
    d = c.dist[np.arange(len(group)), group]
    ks = min(SPREAD_K, pts.shape[1])
    valid = np.isfinite(d[:, :ks])
    sq = np.where(valid, ((pts[:, :ks] - pos[:, None, :]) ** 2).sum(axis=2), 0.0)
    spread = np.sqrt(sq.sum(axis=1) / np.maximum(valid.sum(axis=1), 1))
    kd = min(DIST_K, d.shape[1])
    near = d[:, :kd]
    fin = np.isfinite(near)
    mean_d = np.where(fin, near, 0.0).sum(axis=1) / np.maximum(fin.sum(axis=1), 1)
    return pos, np.column_stack([np.ones(len(group)), np.log1p(spread), np.log(mean_d + 1e-3)])


def fit_calibration(feats: np.ndarray, err: np.ndarray) -> list[float]:
    """log(1 + error) ~ features by least squares with non-negative slopes (tiny active set), plus a
    final multiplier that makes the median estimate equal the median error. Log space keeps the
    few building/floor misses (errors of 50+ m) from dominating the fit."""
    target = np.log1p(err)
    active = list(range(feats.shape[1]))
    coef = np.zeros(feats.shape[1])
    while active:
        sol, *_ = np.linalg.lstsq(feats[:, active], target, rcond=None)
        slopes = [i for i, a in enumerate(active) if a != 0 and sol[i] < 0]
        if not slopes:
            coef[active] = sol
            break
        active.pop(min(slopes, key=lambda i: sol[i]))
    est = np.expm1(feats @ coef)
    scale = float(np.median(err) / max(float(np.median(est)), 1e-9))
    return [*(float(v) for v in coef), scale]


def estimate_error(feats: np.ndarray, calibration: list[float]) -> np.ndarray:
    *coef, scale = calibration
    return np.maximum(np.expm1(feats @ np.asarray(coef)) * scale, 0.1)


# ---------------------------------------------------------------- training data


@dataclass
class Survey:
    """Training fingerprints ready for matching: sorted by floor group, stale entries masked."""

    rows: SparseRows
    xy: np.ndarray  # (n, 2) float64
    bounds: np.ndarray  # (G+1,) row ranges of the floor groups
    n_cols: int


@dataclass
class Groups:
    """Floor groups (building-qualified floors) and the building of each."""

    labels: list[tuple[str | None, str]]  # (building, floor) per group
    building_code: np.ndarray  # (G,) int64

    @classmethod
    def from_labels(cls, labels: list[tuple[str | None, str]]) -> Groups:
        buildings = sorted({b or "" for b, _ in labels})
        code = np.array([buildings.index(b or "") for b, _ in labels], dtype=np.int64)
        return cls(labels, code)


def group_codes(fs: FingerprintSet, groups: Groups) -> np.ndarray:
    index = {lab: i for i, lab in enumerate(groups.labels)}
    return np.array([index.get((b, str(f)), -1) for b, f in zip(fs.building, fs.floor, strict=True)], dtype=np.int64)


def prepare_survey(fs: FingerprintSet, groups: Groups, max_age_ms: float | None) -> Survey:
    """Mask stale entries, drop rows left empty and exact duplicates, sort rows by floor group."""
    rss = fs.fresh_rss(max_age_ms)
    code = group_codes(fs, groups)
    keep = (~np.isnan(rss)).any(axis=1) & (code >= 0)
    keep &= _first_occurrences(rss, fs.xy, code)
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(code[idx], kind="stable")]
    bounds = np.searchsorted(code[idx], np.arange(len(groups.labels) + 1), side="left").astype(np.int64)
    return Survey(SparseRows.from_dense(rss[idx]), fs.xy[idx].astype(np.float64), bounds, rss.shape[1])


def _first_occurrences(rss: np.ndarray, xy: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Mask of rows that are not an exact repeat (fingerprint and label) of an earlier row."""
    seen: set[bytes] = set()
    keep = np.zeros(len(rss), dtype=bool)
    filled = np.nan_to_num(rss, nan=1e9)
    for i in range(len(rss)):
        h = hashlib.blake2b(filled[i].tobytes() + xy[i].tobytes() + code[i].tobytes(), digest_size=16).digest()
        if h not in seen:
            seen.add(h)
            keep[i] = True
    return keep


def resolve_min_rss(p: WKNNParams, fs: FingerprintSet) -> float:
    if p.min_rss is not None:
        return float(p.min_rss)
    heard = fs.rss[~np.isnan(fs.rss)]
    weakest = float(np.floor(heard.min())) if heard.size else -100.0
    return min(weakest, -2.0) - 1.0


# ---------------------------------------------------------------- matching


class Matcher:
    """A survey indexed in one representation; answers candidate lists for query batches."""

    def __init__(self, survey: Survey, p: WKNNParams, min_rss: float) -> None:
        self.survey = survey
        self.p = p
        self.min_rss = min_rss
        self.index = SparseIndex(survey.rows, survey.n_cols, p, min_rss)

    def candidates(self, q: SparseRows, kinds: tuple[str, ...], k: int) -> dict[str, Candidates]:
        """Per distance kind, the k nearest per floor group for every query row (chunked)."""
        chunk = max(1, _CHUNK_CELLS // max(self.index.n, 1))
        parts: dict[str, list[Candidates]] = {kind: [] for kind in kinds}
        for lo in range(0, len(q), chunk):
            sub = q.take(np.arange(lo, min(lo + chunk, len(q))))
            qv = represent(sub.rss, self.p, self.min_rss)
            rid = sub.row_ids()
            qs1 = np.bincount(rid, weights=qv, minlength=len(sub))
            qs2 = np.bincount(rid, weights=qv * qv, minlength=len(sub))
            need_min = any(kind in ("manhattan", "sorensen") for kind in kinds)
            need_dot = any(kind in ("euclidean", "cosine") for kind in kinds)
            mins, dots = self.index.overlap(sub, qv, need_min, need_dot)
            for kind in kinds:
                dist = distances(kind, self.index, mins, dots, qs1, qs2)
                parts[kind].append(nearest_per_group(dist, self.survey.bounds, k))
        return {
            kind: Candidates(np.concatenate([c.dist for c in cs]), np.concatenate([c.idx for c in cs]))
            for kind, cs in parts.items()
        }


def query_rows(rss: np.ndarray, age_ms: np.ndarray | None, max_age_ms: float | None) -> SparseRows:
    if max_age_ms is not None and age_ms is not None:
        stale = age_ms > max_age_ms  # NaN (unknown) ages compare False and stay
        if stale.any():
            rss = np.where(stale, np.nan, rss)
    return SparseRows.from_dense(np.asarray(rss, dtype=np.float32))


# ---------------------------------------------------------------- tuning


@dataclass
class Trial:
    params: WKNNParams
    score: float
    mean_m: float
    floor_hit: float


def _best_k(
    c: Candidates,
    groups: Groups,
    xy: np.ndarray,
    truth: tuple[np.ndarray, np.ndarray],
    p: WKNNParams,
    pinned: frozenset[str],
) -> Trial:
    """Staged search on one candidate list: k_building by building hit, then k_floor by floor hit,
    then k by the penalised score, for each weighting. Pinned values are kept."""
    true_group, true_xy = truth
    rows = np.arange(len(true_group))
    best: Trial | None = None
    for weighting in (p.weighting,) if "weighting" in pinned else WEIGHTINGS:
        grid_b = (p.k_building,) if "k_building" in pinned else VOTE_K_GRID
        hits_b = [choose_building(c, groups.building_code, kb, weighting)[rows, true_group].mean() for kb in grid_b]
        kb = _pick(grid_b, hits_b, p.k_building)
        allowed = choose_building(c, groups.building_code, kb, weighting)
        grid_f = (p.k_floor,) if "k_floor" in pinned else VOTE_K_GRID
        hits_f = [np.mean(choose_floor(c, allowed, kf, weighting) == true_group) for kf in grid_f]
        kf = _pick(grid_f, hits_f, p.k_floor)
        group = choose_floor(c, allowed, kf, weighting)
        miss = float(np.mean(group != true_group))
        pos_all, _, _ = positions_all_k(c, group, xy, weighting)
        mean_err = np.hypot(*(pos_all - true_xy[:, None, :]).transpose(2, 0, 1)).mean(axis=0)  # per k
        for k in (p.k,) if "k" in pinned else K_GRID:
            mean_m = float(mean_err[min(k, len(mean_err)) - 1])
            score = mean_m + p.floor_penalty_m * miss
            if best is None or score < best.score - 1e-12:
                chosen = replace(p, k=k, k_building=kb, k_floor=kf, weighting=weighting)
                best = Trial(chosen, score, mean_m, 1.0 - miss)
    assert best is not None
    return best


def _pick(grid: tuple[int, ...], hits: list[Any], prefer: int) -> int:
    """Value with the best hit rate; ties go to the value nearest `prefer` (a mid-sized vote is
    more robust than k=1 when the holdout cannot tell them apart)."""
    return min(zip(grid, hits, strict=True), key=lambda vh: (-float(vh[1]), abs(vh[0] - prefer), vh[0]))[0]


class Tuner:
    """Scores every (max_age, representation, distance) on a holdout, searching k's and weighting
    on one sorted neighbour list per candidate."""

    def __init__(
        self, fs: FingerprintSet, p: WKNNParams, pinned: frozenset[str], groups: Groups, seed: int, holdout: Holdout
    ) -> None:
        self.p, self.pinned, self.groups = p, pinned, groups
        fit_idx, hold_idx, self.split_by = holdout
        rng = np.random.default_rng([seed, 1])  # the subsample of tuning queries
        if len(hold_idx) > p.max_tune_queries:
            hold_idx = np.sort(rng.choice(hold_idx, size=p.max_tune_queries, replace=False))
        self.fit_set, self.hold_set = fs.subset(fit_idx), fs.subset(hold_idx)
        self.hold_group = group_codes(self.hold_set, groups)
        self.k_max = max((*K_GRID, *VOTE_K_GRID, p.k, p.k_building, p.k_floor, SPREAD_K))
        self.trials: list[Trial] = []
        self.best: tuple[Trial, Candidates, Survey] | None = None
        self.default: tuple[Trial, Candidates, Survey] | None = None  # best trial with the default rep + distance
        self.min_rss = 0.0

    def grid(self, name: str, default: tuple[Any, ...]) -> tuple[Any, ...]:
        return (getattr(self.p, name),) if name in self.pinned else default

    def run(self, min_rss: float, progress: ProgressFn) -> tuple[Trial, list[float]]:
        """Two stages, to index the survey 8 rather than 20 times: the stale-entry cutoff with the
        default (or pinned) representation, then every representation at the best cutoff. Each
        step scores all distances, k's and weightings."""
        has_ages = bool(np.isfinite(self.fit_set.age_ms).any())
        ages = self.grid("max_age_ms", AGE_GRID_MS if has_ages else (None,))
        reps = self.grid("representation", REPRESENTATIONS)
        first = self.p.representation if self.p.representation in reps else reps[0]
        steps = [(age, first) for age in ages]
        n_steps = len(steps) + len(reps) - 1
        self.min_rss = min_rss
        for i, (age, rep) in enumerate(steps):
            progress(i / n_steps, f"tuning wknn: max_age_ms={age} representation={rep}")
            self._evaluate(age, rep)
        assert self.best is not None
        best_age = self.best[0].params.max_age_ms
        for i, rep in enumerate(r for r in reps if r != first):
            progress((len(steps) + i) / n_steps, f"tuning wknn: max_age_ms={best_age} representation={rep}")
            self._evaluate(best_age, rep)
        margin = 1 + self.p.prefer_default_within
        if self.default is not None and self.default[0].score <= self.best[0].score * margin:
            self.best = self.default
        trial, c, survey = self.best
        heard = np.diff(query_rows(self.hold_set.rss, self.hold_set.age_ms, trial.params.max_age_ms).indptr) > 0
        return trial, self._calibrate(trial.params, c, survey, heard)

    def _evaluate(self, age: float | None, rep: str) -> None:
        """Score every distance (and k, weighting) for one cutoff and representation."""
        survey = prepare_survey(self.fit_set, self.groups, age)
        queries = query_rows(self.hold_set.rss, self.hold_set.age_ms, age)
        heard = np.diff(queries.indptr) > 0
        p = replace(self.p, max_age_ms=age, representation=rep)
        kinds = self.grid("distance", DISTANCES)
        cands = Matcher(survey, p, self.min_rss).candidates(queries.take(np.flatnonzero(heard)), kinds, self.k_max)
        truth = (self.hold_group[heard], self.hold_set.xy[heard])
        for kind, c in cands.items():
            trial = _best_k(c, self.groups, survey.xy, truth, replace(p, distance=kind), self.pinned)
            trial = self._with_empty(trial, heard, survey)
            self.trials.append(trial)
            if self.best is None or trial.score < self.best[0].score:
                self.best = (trial, c, survey)
            is_default = (rep, kind) == (WKNNParams.representation, WKNNParams.distance)
            if is_default and (self.default is None or trial.score < self.default[0].score):
                self.default = (trial, c, survey)

    def _with_empty(self, trial: Trial, heard: np.ndarray, survey: Survey) -> Trial:
        """Queries left with no fresh AP count as floor misses, at their distance from the survey centroid."""
        frac_empty = 1.0 - float(heard.mean()) if len(heard) else 0.0
        if frac_empty == 0.0:
            return trial
        far = float(np.hypot(*(self.hold_set.xy[~heard] - survey.xy.mean(axis=0)).T).mean())
        mean_m = trial.mean_m * (1 - frac_empty) + far * frac_empty
        hit = trial.floor_hit * (1 - frac_empty)
        return Trial(trial.params, mean_m + self.p.floor_penalty_m * (1 - hit), mean_m, hit)

    def _calibrate(self, p: WKNNParams, c: Candidates, survey: Survey, heard: np.ndarray) -> list[float]:
        allowed = choose_building(c, self.groups.building_code, p.k_building, p.weighting)
        group = choose_floor(c, allowed, p.k_floor, p.weighting)
        pos, feats = error_features(c, group, survey.xy, p.k, p.weighting)
        err = np.hypot(*(pos - self.hold_set.xy[heard]).T)
        return fit_calibration(feats, err)


# ---------------------------------------------------------------- the model


class WKNN(LocModel):
    name: ClassVar[str] = "wknn"

    def __init__(
        self,
        aps: list[str],
        params: WKNNParams,
        min_rss: float,
        survey: Survey,
        groups: Groups,
        calibration: list[float],
        tuning: dict[str, Any] | None = None,
    ) -> None:
        self.aps = list(aps)
        self.params = params
        self.min_rss = float(min_rss)
        self.survey = survey
        self.groups = groups
        self.calibration = [float(v) for v in calibration]
        self.tuning = tuning or {}
        self.matcher = Matcher(survey, params, self.min_rss)
        sizes = np.diff(survey.bounds)
        self.fallback_group = int(np.argmax(sizes))
        lo, hi = survey.bounds[self.fallback_group], survey.bounds[self.fallback_group + 1]
        self.fallback_xy = survey.xy[lo:hi].mean(axis=0)
        span = survey.xy.max(axis=0) - survey.xy.min(axis=0)
        self.fallback_error_m = float(max(np.hypot(*span), 1.0))

    # -- training

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        WKNNParams.parse(params)

    @classmethod
    def fit(
        cls,
        train: FingerprintSet,
        params: dict[str, Any],
        *,
        holdout: np.ndarray | None = None,
        seed: int = 0,
        progress: ProgressFn = no_progress,
        device: str = "cpu",
    ) -> WKNN:
        """Tune (or only calibrate) on the holdout, then index the training rows: all of them when the model
        chose its own holdout (`holdout` None), else those outside the caller's holdout (see `refit`)."""
        p, pinned = WKNNParams.parse(params)
        groups = Groups.from_labels(
            sorted(
                {(b, str(f)) for b, f in zip(train.building, train.floor, strict=True)},
                key=lambda g: (g[0] or "", g[1]),
            )
        )
        min_rss = resolve_min_rss(p, train)
        t0 = time.perf_counter()
        calibration = [0.0, 1.0, 0.0, 1.0]  # untuned: 1 + the neighbours' spread, unscaled
        tuning: dict[str, Any] = {"tuned": False}
        if holdout is None:
            split = holdout_split(train, p.holdout_fraction, seed, p.holdout_by)
            rows = train
        else:
            hold = np.unique(np.asarray(holdout, dtype=np.int64))
            split = Holdout(np.setdiff1d(np.arange(len(train)), hold), hold, "caller")
            rows = train.subset(split.fit)
        if (p.tune or p.calibrate) and len(split.fit) and len(split.hold):
            # untuned: every choice pinned, so the holdout only calibrates the error estimate
            tuner = Tuner(train, p, pinned if p.tune else frozenset(asdict(p)), groups, seed, split)
            best, calibration = tuner.run(min_rss, progress)
            p = best.params
            tuning = _tuning_report(tuner, best, time.perf_counter() - t0, p.tune)
        progress(0.95, f"fitting wknn on {len(rows)} training rows")
        return cls._index(rows, p, min_rss, groups, calibration, tuning, progress)

    @classmethod
    def _index(
        cls,
        rows: FingerprintSet,
        p: WKNNParams,
        min_rss: float,
        groups: Groups,
        calibration: list[float],
        tuning: dict[str, Any],
        progress: ProgressFn,
    ) -> WKNN:
        survey = prepare_survey(rows, groups, p.max_age_ms)
        if len(survey.rows) == 0:
            raise InsufficientData("wknn: no training fingerprint has a heard access point")
        model = cls(list(rows.aps), p, min_rss, survey, groups, calibration, tuning)
        progress(1.0, "done")
        return model

    def refit(
        self, full: FingerprintSet, *, seed: int = 0, progress: ProgressFn = no_progress, device: str = "cpu"
    ) -> WKNN:
        """Every row of `full` indexed with the settings and error calibration chosen on the holdout."""
        full = full.with_aps(self.aps)
        return type(self)._index(
            full, self.params, self.min_rss, self.groups, self.calibration, {**self.tuning, "refit": True}, progress
        )

    def settings(self) -> dict[str, Any]:
        """The tuned choices pinned (no re-tuning; the holdout only calibrates error_m), same representation floor."""
        return {**asdict(self.params), "tune": False, "min_rss": self.min_rss}

    # -- inference

    def max_age_ms(self) -> float | None:
        return self.params.max_age_ms

    def predict(self, batch: QueryBatch) -> Prediction:
        q = query_rows(batch.rss, batch.age_ms, self.params.max_age_ms)
        n = len(q)
        group = np.full(n, self.fallback_group, dtype=np.int64)
        xy = np.tile(self.fallback_xy, (n, 1)).astype(np.float64)
        err = np.full(n, self.fallback_error_m)
        heard = np.flatnonzero(np.diff(q.indptr) > 0)
        kn = max(self.params.k, SPREAD_K)
        nb_xy = np.zeros((n, kn, 2))
        nb_w = np.zeros((n, kn))
        if len(heard):
            g, pos, e, (pts, w) = self._match(q.take(heard))
            group[heard], xy[heard], err[heard] = g, pos, e
            nb_xy[heard, : pts.shape[1]], nb_w[heard, : w.shape[1]] = pts[:, :kn], w[:, :kn]
        labels = self.groups.labels
        return Prediction(
            xy=xy,
            floor=np.array([labels[g][1] for g in group], dtype=object),
            building=np.array([labels[g][0] for g in group], dtype=object),
            error_m=err,
            neighbours=(nb_xy, nb_w),
        )

    def nearest_distance(self, batch: QueryBatch) -> np.ndarray:
        """Distance (in the model's metric) from each query to its nearest survey fingerprint;
        inf when the query hears none of the model's APs. Used to break site-detection ties."""
        q = query_rows(batch.rss, batch.age_ms, self.params.max_age_ms)
        out = np.full(len(q), np.inf)
        heard = np.flatnonzero(np.diff(q.indptr) > 0)
        if len(heard):
            c = self.matcher.candidates(q.take(heard), (self.params.distance,), 1)[self.params.distance]
            out[heard] = c.dist[:, :, 0].min(axis=1)
        return out

    def _match(self, q: SparseRows) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """Floor group, position, error estimate, and the neighbours on that floor (positions, weights)."""
        p = self.params
        k = max(p.k, p.k_building, p.k_floor, SPREAD_K)
        c = self.matcher.candidates(q, (p.distance,), k)[p.distance]
        allowed = choose_building(c, self.groups.building_code, p.k_building, p.weighting)
        group = choose_floor(c, allowed, p.k_floor, p.weighting)
        pos, feats = error_features(c, group, self.survey.xy, p.k, p.weighting)
        _, pts, w = positions_all_k(c, group, self.survey.xy, p.weighting)
        return group, pos, estimate_error(feats, self.calibration), (pts, w)

    # -- state

    def arrays(self) -> dict[str, np.ndarray]:
        rows = self.survey.rows
        return {
            "rss_indptr": rows.indptr,
            "rss_cols": rows.cols,
            "rss_dbm": rows.rss,
            "xy": self.survey.xy,
            "group_bounds": self.survey.bounds,
        }

    def config(self) -> dict[str, Any]:
        return {
            "aps": list(self.aps),
            "params": asdict(self.params),
            "min_rss": self.min_rss,
            "groups": [[b, f] for b, f in self.groups.labels],
            "calibration": list(self.calibration),
            "tuning": self.tuning,
        }

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], config: dict[str, Any], device: str = "cpu") -> WKNN:
        rows = SparseRows(
            np.asarray(arrays["rss_indptr"], dtype=np.int64),
            np.asarray(arrays["rss_cols"], dtype=np.int64),
            np.asarray(arrays["rss_dbm"], dtype=np.float32),
        )
        aps = list(config["aps"])
        survey = Survey(rows, np.asarray(arrays["xy"], dtype=np.float64), np.asarray(arrays["group_bounds"]), len(aps))
        groups = Groups.from_labels([(b, str(f)) for b, f in config["groups"]])
        params = replace(WKNNParams(), **config["params"])
        return cls(aps, params, config["min_rss"], survey, groups, config["calibration"], config.get("tuning"))


def _tuning_report(tuner: Tuner, best: Trial, seconds: float, tuned: bool) -> dict[str, Any]:
    ranked = sorted(tuner.trials, key=lambda t: t.score)
    keys = ("representation", "distance", "max_age_ms", "k", "k_building", "k_floor", "weighting")
    return {
        "tuned": tuned,
        "holdout_by": tuner.split_by,
        "n_fit": len(tuner.fit_set),
        "n_holdout": len(tuner.hold_set),
        "candidates": len(tuner.trials),
        "seconds": round(seconds, 3),
        "objective": "mean_m + floor_penalty_m * (1 - floor_hit), lower is better",
        "best": {"score": best.score, "mean_m": best.mean_m, "floor_hit": best.floor_hit},
        "top": [
            {**{k: getattr(t.params, k) for k in keys}, "score": t.score, "mean_m": t.mean_m, "floor_hit": t.floor_hit}
            for t in ranked[:10]
        ],
    }
