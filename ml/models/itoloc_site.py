"""iToLoc site layout (numpy only): zones, per-zone AP lists, reference cells, domains, hold-out.

- Zones: with `zones="building"` every building is a zone with its own list of N APs
  (a site-wide top-N would leave whole buildings with almost no heard AP); the network is
  shared and each zone's cells are the only softmax classes allowed for its scans. At
  query time the zone is the one whose APs are heard most strongly (`zone_of`).
- AP list of a zone: the N APs heard most often in the zone's training scans (ties:
  stronger mean RSS), after a greedy coverage pass (`ap_min_heard`: every scan should hear
  at least that many of the N where possible), ordered by spectral seriation of their co-occurrence (Fiedler
  vector of the co-hearing graph) so that neighbouring pixels of the image belong to APs
  that are heard together.
- Cells (the reference locations): survey positions snapped to a `cell_m` grid per
  building + floor; a cell's centre is the mean of its survey positions, so it lies
  where people were surveyed.
- Domains: (device, time bucket) pairs; rare pairs pooled into "other".
- Hold-out: whole groups (path, else user, else device, else single rows) within a
  floor, never the last group of a floor, so every floor keeps training data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ml.data.features import FingerprintSet


@dataclass
class SiteLayout:
    aps: list[str]  # model vocabulary: every AP of the training set (queries come over it)
    zone_names: list[str]  # building label per zone ("" when zones are not used)
    zone_aps: np.ndarray  # (Z, N) int64 columns of `aps` that make a zone's image, -1 = padding (unheard)
    cell_xy: np.ndarray  # (C, 2) float64 centres
    cell_floor: np.ndarray  # (C,) object floor label
    cell_building: np.ndarray  # (C,) object building label or None
    cell_zone: np.ndarray  # (C,) int64


def zone_labels(fs: FingerprintSet, zones: str) -> np.ndarray:
    """Per-row zone name: the building label when zoning by building (None -> "")."""
    if zones == "site":
        return np.array([""] * len(fs), dtype=object)
    return np.array(["" if b is None else str(b) for b in fs.building], dtype=object)


def seriate(heard: np.ndarray) -> np.ndarray:
    """Order of columns that puts co-heard APs next to each other (Fiedler vector)."""
    h = heard.astype(np.float64)
    co = h.T @ h
    np.fill_diagonal(co, 0.0)
    lap = np.diag(co.sum(1)) - co
    _, vecs = np.linalg.eigh(lap)
    v = vecs[:, 1] if len(co) > 1 else np.zeros(len(co))
    if v[np.argmax(np.abs(v))] < 0:  # fix the eigenvector's sign
        v = -v
    return np.lexsort((np.arange(len(v)), np.round(v, 12)))


def top_aps(rss: np.ndarray, n: int, min_heard: int = 0) -> np.ndarray:
    """Columns of n APs, seriated. min_heard = 0: the n heard most often (ties: stronger mean). min_heard > 0:
    greedy coverage first: each pick is the AP heard by most scans that still hear fewer than `min_heard` of the
    picks (ties: more often heard, then stronger), so that in a site with many more APs than n (a mall floor hears
    1,000+) no part of it is left with an empty image; once every scan is covered, by frequency as above."""
    heard = ~np.isnan(rss)
    count = heard.sum(0)
    mean = np.where(count > 0, np.nansum(np.nan_to_num(rss, nan=0.0), 0) / np.maximum(count, 1), -np.inf)
    order = np.lexsort((np.arange(rss.shape[1]), -mean, -count))
    n_pick = min(n, int((count > 0).sum()))
    if min_heard <= 0:
        chosen = order[:n_pick]
    else:
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        taken = np.zeros(rss.shape[1], dtype=bool)
        covered = np.zeros(len(rss), dtype=np.int64)
        picks: list[int] = []
        heard_f = heard.astype(np.float32)
        for _ in range(n_pick):
            short = covered < min_heard
            gain = heard_f[short].sum(0) if short.any() else count.astype(np.float32)
            # lexicographic (gain, frequency rank) without a sort: gain dominates, rank breaks ties
            score = gain * (len(order) + 1) - rank
            score[taken | (count == 0)] = -np.inf
            j = int(np.argmax(score))
            picks.append(j)
            taken[j] = True
            covered += heard[:, j]
        chosen = np.array(picks, dtype=np.int64)
    return chosen[seriate(heard[:, chosen])]


def build_layout(
    fs: FingerprintSet, rss: np.ndarray, n_aps: int, zones: str, cell_m: float, min_heard: int = 0
) -> SiteLayout:
    zone_of_row = zone_labels(fs, zones)
    names = sorted(set(zone_of_row.tolist()))
    picks = [top_aps(rss[zone_of_row == z], n_aps, min_heard) for z in names]
    zone_aps = np.full((len(names), n_aps), -1, dtype=np.int64)
    for zi, p in enumerate(picks):
        zone_aps[zi, : len(p)] = p
    xy, floor, building, zone = _cells(fs, zone_of_row, names, cell_m)
    return SiteLayout(list(fs.aps), names, zone_aps, xy, floor, building, zone)


def _cell_keys(fs: FingerprintSet, zone_of_row: np.ndarray, cell_m: float) -> np.ndarray:
    grid = np.floor(fs.xy / cell_m).astype(np.int64)
    return np.array(
        [
            f"{z}\x1f{b}\x1f{f}\x1f{gx}\x1f{gy}"
            for z, b, f, (gx, gy) in zip(zone_of_row, fs.building, fs.floor, grid, strict=True)
        ],
        dtype=object,
    )


def _cells(
    fs: FingerprintSet, zone_of_row: np.ndarray, names: list[str], cell_m: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    keys = _cell_keys(fs, zone_of_row, cell_m)
    uniq, inv = np.unique(keys, return_inverse=True)
    n = len(uniq)
    xy = np.zeros((n, 2))
    np.add.at(xy, inv, fs.xy)
    xy /= np.bincount(inv, minlength=n)[:, None]
    first = np.full(n, -1)
    first[inv[::-1]] = np.arange(len(inv))[::-1]
    zone_index = {z: i for i, z in enumerate(names)}
    return (
        xy,
        np.array([str(fs.floor[i]) for i in first], dtype=object),
        np.array([fs.building[i] for i in first], dtype=object),
        np.array([zone_index[zone_of_row[i]] for i in first], dtype=np.int64),
    )


def cell_of_rows(fs: FingerprintSet, layout: SiteLayout, zones: str) -> np.ndarray:
    """Nearest cell of each labelled row among cells of its zone and floor (-1: none)."""
    zone_of_row = zone_labels(fs, zones)
    index = {z: i for i, z in enumerate(layout.zone_names)}
    out = np.full(len(fs), -1, dtype=np.int64)
    for i in range(len(fs)):
        z = index.get(zone_of_row[i], -1)
        ok = (layout.cell_zone == z) & (layout.cell_floor == str(fs.floor[i]))
        if not ok.any():
            continue
        cand = np.flatnonzero(ok)
        out[i] = cand[np.argmin(np.hypot(*(layout.cell_xy[cand] - fs.xy[i]).T))]
    return out


def zone_rss(rss: np.ndarray, zone_aps: np.ndarray, zone: np.ndarray) -> np.ndarray:
    """(n, N) RSS of each row over its zone's AP list (padding -> NaN)."""
    cols = zone_aps[zone]
    out = np.take_along_axis(np.concatenate([rss, np.full((len(rss), 1), np.nan, np.float32)], 1), cols, 1)
    return out.astype(np.float32)


def zone_of(rss: np.ndarray, zone_aps: np.ndarray, floor_dbm: float) -> np.ndarray:
    """Zone whose APs are heard most strongly: argmax of sum of (rss - floor)+ over its list."""
    level = np.clip(np.nan_to_num(rss, nan=floor_dbm) - floor_dbm, 0, None)
    level = np.concatenate([level, np.zeros((len(rss), 1), level.dtype)], 1)
    scores = np.stack([level[:, z].sum(1) for z in zone_aps], 1)
    return np.asarray(np.argmax(scores, 1), dtype=np.int64)


def domain_labels(fs: FingerprintSet, bucket_ms: int, min_rows: int) -> tuple[np.ndarray, list[str]]:
    """(device, time bucket) domain index per row, and the domain names."""
    keys = np.array(
        [f"{d}@{t // bucket_ms if t >= 0 else '?'}" for d, t in zip(fs.device, fs.timestamp, strict=True)],
        dtype=object,
    )
    uniq, counts = np.unique(keys, return_counts=True)
    keep = {k for k, c in zip(uniq, counts, strict=True) if c >= min_rows}
    keys = np.array([k if k in keep else "other" for k in keys], dtype=object)
    names = sorted(set(keys.tolist()))
    index = {k: i for i, k in enumerate(names)}
    return np.array([index[k] for k in keys], dtype=np.int64), names
