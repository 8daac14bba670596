"""Sensor windows -> the fixed-rate, orientation-free features MTLoc consumes (pure numpy).

MTLoc (paper 000) feeds its IMU-LSTM 10 steps x 2 features (accelerometer and gyroscope) and
its MAG-LSTM 10 steps x 1 feature. siteloc uses the *magnitude* of each 3-axis vector: a phone
in a hand, a pocket or a bag reports the same motion on different axes, and a magnitude does
not depend on how the phone is held (Android axes rotate with the phone). Per step:

    |accel| (m/s^2, gravity included), |gyro| (rad/s), |mag| (uT)

A window is resampled onto `steps` instants 1/rate_hz apart that end at the window's last
sample (linear interpolation of the magnitudes; the phone may send any rate). When a modality
covers less than the grid's span (a partial window), grid points before its first sample hold
that sample's value and its *coverage* (the covered share of the span, 0..1) says so; 0 means
the modality is missing.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ml.types import SensorData

MODALITIES = ("accel", "gyro", "mag")


def window_features(s: SensorData | None, steps: int = 10, rate_hz: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """((steps, 3) float32 magnitudes |accel|, |gyro|, |mag|; (3,) float32 coverage in [0, 1])."""
    feats = np.zeros((steps, 3), dtype=np.float32)
    cov = np.zeros(3, dtype=np.float32)
    if s is None:
        return feats, cov
    span = (steps - 1) / rate_hz
    grid = -(steps - 1 - np.arange(steps)) / rate_hz
    for k, name in enumerate(MODALITIES):
        a = getattr(s, name)
        if a is None or len(a) == 0:
            continue
        mag = np.linalg.norm(np.asarray(a, dtype=np.float64).reshape(-1, 3), axis=1)
        if len(mag) == steps and abs(s.rate_hz - rate_hz) < 1e-6:  # already on the grid (the ILC reader's windows)
            feats[:, k] = mag
            cov[k] = 1.0
            continue
        t = (np.arange(len(mag)) - (len(mag) - 1)) / float(s.rate_hz)
        feats[:, k] = np.interp(grid, t, mag)
        cov[k] = 1.0 if span <= 0 else min(1.0, max(-t[0] / span, 1e-3))
    return feats, cov


def window_matrix(
    sensors: Sequence[SensorData | None] | np.ndarray | None, n: int, steps: int = 10, rate_hz: float = 10.0
) -> tuple[np.ndarray, np.ndarray]:
    """`window_features` of n rows: ((n, steps, 3) float32, (n, 3) float32 coverage); None = no sensors at all."""
    feats = np.zeros((n, steps, 3), dtype=np.float32)
    cov = np.zeros((n, 3), dtype=np.float32)
    if sensors is None:
        return feats, cov
    if len(sensors) != n:
        raise ValueError(f"{len(sensors)} sensor windows for {n} rows")
    for i, s in enumerate(sensors):
        if s is not None:
            feats[i], cov[i] = window_features(s, steps, rate_hz)
    return feats, cov


def window_speed(path: np.ndarray, timestamp: np.ndarray, xy: np.ndarray, window_ms: float) -> np.ndarray:
    """Distance walked during each window (m/s over a 1 s window): |xy(t) - xy(t - window_ms)| / window,
    where xy(t - window_ms) is interpolated between the rows of the same path; NaN when the path has no
    row that early (its first second) or the row has no path/timestamp."""
    n = len(path)
    out = np.full(n, np.nan)
    groups: dict[object, list[int]] = {}
    for i, (p, t) in enumerate(zip(path, timestamp, strict=True)):
        if p is not None and t >= 0:
            groups.setdefault(p, []).append(i)
    for rows in groups.values():
        idx = np.asarray(rows)
        idx = idx[np.argsort(timestamp[idx], kind="stable")]
        t = timestamp[idx].astype(np.float64)
        if len(idx) < 2:
            continue
        before = t - window_ms
        ok = before >= t[0]
        px = np.interp(before, t, xy[idx, 0])
        py = np.interp(before, t, xy[idx, 1])
        d = np.hypot(xy[idx, 0] - px, xy[idx, 1] - py) / (window_ms / 1000.0)
        out[idx[ok]] = d[ok]
    return out
