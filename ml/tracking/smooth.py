"""Forward-backward (Rauch-Tung-Striebel) smoothing of a session's filtered track.

The forward pass is the particle filter; each answered point keeps the cloud's mean and covariance, the mean
motion that led to it and that motion's noise. Treating those moments as Gaussian, the backward pass
    m_s[t] = m[t] + G (m_s[t+1] - (m[t] + u[t+1])),  G = P[t] (P[t] + Q[t+1])^-1
lets later WiFi fixes correct earlier points. A floor change or a restart of the cloud starts a new segment:
segments are smoothed separately (nothing links a point to the cloud it replaced).
"""

from __future__ import annotations

import numpy as np

from ml.tracking.filter import Estimate, TrackState


def smooth_history(h: np.ndarray) -> np.ndarray:
    """(n, 2) smoothed x, y for history rows `h` (see filter._H for the columns)."""
    n = len(h)
    out = h[:, 1:3].copy()
    if n < 2:
        return out
    P = np.empty((n, 2, 2))
    P[:, 0, 0], P[:, 0, 1], P[:, 1, 0], P[:, 1, 1] = h[:, 4], h[:, 5], h[:, 5], h[:, 6]
    P += np.eye(2) * 1e-3
    ms, Ps = out[-1].copy(), P[-1].copy()
    for t in range(n - 2, -1, -1):
        if h[t + 1, 10] != h[t, 10]:  # new segment starts at t+1
            ms, Ps = out[t].copy(), P[t].copy()
            continue
        Q = np.eye(2) * max(h[t + 1, 9], 1e-4)
        Pp = P[t] + Q
        G = P[t] @ np.linalg.inv(Pp)
        ms = out[t] + G @ (ms - (out[t] + h[t + 1, 7:9]))
        Ps = P[t] + G @ (Ps - Pp) @ G.T
        out[t] = ms
    return out


def smoothed_points(state: TrackState) -> list[Estimate]:
    h = state.history
    xy = smooth_history(h)
    return [
        Estimate(int(r[0]), float(x), float(y), state.floors[int(r[11])], float(r[3]))
        for r, (x, y) in zip(h, xy, strict=True)
    ]
