"""Dense, columnar fingerprint matrices built from `Fingerprint` records.

A `FingerprintSet` is what every model trains and predicts on: one row per scan,
one column per access point (in a fixed vocabulary order), RSSI in dBm with NaN
for "not heard". Entry ages are kept beside the RSSI so a model can choose (and
tune) how stale a cached Android scan entry may be before it is ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ml.types import Fingerprint, WifiReading


@dataclass
class FingerprintSet:
    aps: list[str]  # column order
    rss: np.ndarray  # (n, m) float32 dBm, NaN = not heard
    age_ms: np.ndarray  # (n, m) float32 ms, NaN = unknown / not heard
    xy: np.ndarray  # (n, 2) float64 metres
    floor: np.ndarray  # (n,) object: str labels
    building: np.ndarray  # (n,) object: str or None
    path: np.ndarray  # (n,) object: str or None
    device: np.ndarray  # (n,) object: str or None
    user: np.ndarray  # (n,) object: str or None
    timestamp: np.ndarray  # (n,) int64 unix ms, -1 = unknown
    # (n,) object: each row's `SensorData` window or None; None for the whole set = no row has one
    sensors: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.rss.shape[0])

    def subset(self, idx: np.ndarray | Sequence[int]) -> FingerprintSet:
        """Rows `idx` (indices or a boolean mask), same AP columns."""
        idx = np.asarray(idx)
        kwargs: dict[str, Any] = {f.name: _rows(getattr(self, f.name), idx) for f in fields(self) if f.name != "aps"}
        return FingerprintSet(aps=list(self.aps), **kwargs)

    def fresh_rss(self, max_age_ms: float | None) -> np.ndarray:
        """RSSI with entries older than `max_age_ms` masked as not heard (NaN)."""
        if max_age_ms is None:
            return self.rss
        stale = self.age_ms > max_age_ms  # NaN ages compare False: unknown age counts as fresh
        if not stale.any():
            return self.rss
        out = self.rss.copy()
        out[stale] = np.nan
        return out

    def with_aps(self, aps: Sequence[str]) -> FingerprintSet:
        """The same rows re-expressed over another AP vocabulary (unknown columns -> NaN)."""
        aps = list(aps)
        rss = reindex_columns(self.rss, self.aps, aps)
        age = reindex_columns(self.age_ms, self.aps, aps)
        kwargs = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("aps", "rss", "age_ms")}
        return FingerprintSet(aps=aps, rss=rss, age_ms=age, **kwargs)

    @property
    def floor_key(self) -> np.ndarray:
        """Building-qualified floor labels ("b|f"), unique across buildings."""
        return np.array([f"{b or ''}|{f}" for b, f in zip(self.building, self.floor, strict=True)], dtype=object)


def reindex_columns(a: np.ndarray, have: Sequence[str], want: Sequence[str]) -> np.ndarray:
    """(n, len(want)) float32: the columns of `a` (named `have`) in the order `want`; unknown names -> NaN."""
    index = {b: i for i, b in enumerate(have)}
    src = np.array([index.get(b, -1) for b in want], dtype=np.int64)
    ok = src >= 0
    out = np.full((a.shape[0], len(src)), np.nan, dtype=np.float32)
    out[:, ok] = a[:, src[ok]]
    return out


def _rows(a: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
    return None if a is None else a[idx]


def ap_vocabulary(fps: Iterable[Fingerprint], min_count: int = 1) -> list[str]:
    """APs in order of first appearance, keeping those heard in at least `min_count` scans."""
    counts: dict[str, int] = {}
    for fp in fps:
        for r in fp.wifi:
            counts[r.bssid] = counts.get(r.bssid, 0) + 1
    return [b for b, c in counts.items() if c >= min_count]


def scan_row(wifi: Iterable[WifiReading], ap_index: dict[str, int], m: int) -> tuple[np.ndarray, np.ndarray]:
    """One scan as (rss, age) rows over a vocabulary; unknown APs are dropped.

    When an AP appears twice in a scan the stronger reading wins.
    """
    rss = np.full(m, np.nan, dtype=np.float32)
    age = np.full(m, np.nan, dtype=np.float32)
    for r in wifi:
        j = ap_index.get(r.bssid)
        if j is None:
            continue
        if np.isnan(rss[j]) or r.rssi > rss[j]:
            rss[j] = r.rssi
            age[j] = np.nan if r.age_ms is None else r.age_ms
    return rss, age


def build_set(fps: Sequence[Fingerprint], aps: Sequence[str] | None = None) -> FingerprintSet:
    """Dense matrices for `fps` over `aps` (default: every AP heard in `fps`)."""
    if aps is None:
        aps = ap_vocabulary(fps)
    aps = list(aps)
    index = {b: i for i, b in enumerate(aps)}
    n, m = len(fps), len(aps)
    rss = np.full((n, m), np.nan, dtype=np.float32)
    age = np.full((n, m), np.nan, dtype=np.float32)
    for i, fp in enumerate(fps):
        rss[i], age[i] = scan_row(fp.wifi, index, m)
    return FingerprintSet(
        aps=aps,
        rss=rss,
        age_ms=age,
        xy=np.array([[fp.x, fp.y] for fp in fps], dtype=np.float64).reshape(n, 2),
        floor=np.array([str(fp.floor) for fp in fps], dtype=object),
        building=np.array([fp.building for fp in fps], dtype=object),
        path=np.array([fp.path for fp in fps], dtype=object),
        device=np.array([fp.device for fp in fps], dtype=object),
        user=np.array([fp.user for fp in fps], dtype=object),
        timestamp=np.array([-1 if fp.timestamp is None else fp.timestamp for fp in fps], dtype=np.int64),
        sensors=_sensor_column(fps),
    )


def _sensor_column(fps: Sequence[Fingerprint]) -> np.ndarray | None:
    if not any(fp.sensors is not None for fp in fps):
        return None
    out = np.empty(len(fps), dtype=object)
    out[:] = [fp.sensors for fp in fps]
    return out
