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


def smoothed_points(state: TrackState, method: str = "blend") -> list[Estimate]:
    h = state.history
    xy = {"lsq": lsq_history, "rts": smooth_history, "blend": blend_history}[method](h)
    return [
        Estimate(int(r[0]), float(x), float(y), state.floors[int(r[11])], float(r[3]))
        for r, (x, y) in zip(h, xy, strict=True)
    ]


def _tridiag(lower: np.ndarray, diag: np.ndarray, upper: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Thomas algorithm: A x = rhs with A tridiagonal (lower[i] = A[i+1, i], upper[i] = A[i, i+1]); rhs (n, k)."""
    n = len(diag)
    c = np.zeros(n)
    d = np.zeros_like(rhs)
    c[0] = upper[0] / diag[0] if n > 1 else 0.0
    d[0] = rhs[0] / diag[0]
    for i in range(1, n):
        den = diag[i] - lower[i - 1] * c[i - 1]
        if i < n - 1:
            c[i] = upper[i] / den
        d[i] = (rhs[i] - lower[i - 1] * d[i - 1]) / den
    x = np.empty_like(rhs)
    x[-1] = d[-1]
    for i in range(n - 2, -1, -1):
        x[i] = d[i] - c[i] * x[i + 1]
    return x


def lsq_segment(h: np.ndarray, iterations: int = 8, huber_k: float = 2.0) -> np.ndarray:
    """Whole-walk least squares for one segment: positions x_t that agree with the WiFi fixes (robustly, Huber
    weights) and with the PDR steps s R(b) d_t, where the walk's stride scale s and heading bias b are
    estimated from the whole segment (alternating: positions given s, b; s, b in closed form given positions).
    This is the offline "cost minimisation" of the 2021 Kaggle indoor competition, exact for a segment."""
    n = len(h)
    prior = h[:, 1:3]
    if n < 2:
        return prior.copy()
    d = h[:, 12:14]
    known = np.isfinite(d[:, 0])
    known[0] = False
    d = np.where(np.isfinite(d), d, 0.0)
    wm = 1.0 / np.maximum(h[:, 9], 0.01)  # motion weight of the edge (t-1 -> t); q from the filter
    wm[0] = 0.0
    fix = h[:, 14:16]
    has_fix = np.isfinite(h[:, 16])
    wf = np.where(has_fix, 1.0 / np.maximum(h[:, 16], 0.5) ** 2, 0.0)
    fix = np.where(np.isfinite(fix), fix, 0.0)
    eps = 1e-4  # a faint pull towards the filtered track: defined even without fixes
    zs = 1.0 + 0.0j
    robust = np.ones(n)
    x = prior.copy()
    for _ in range(iterations):
        zd = (d[:, 0] + 1j * d[:, 1]) * zs
        v = np.column_stack([zd.real, zd.imag]) * known[:, None]
        wf_r = wf * robust
        diag = wf_r + eps + wm + np.append(wm[1:], 0.0)
        off = -wm[1:]
        rhs = (wf_r + 0.0)[:, None] * fix + eps * prior + wm[:, None] * v
        rhs[:-1] -= wm[1:, None] * v[1:]
        x = _tridiag(off, diag, off, rhs)
        # stride scale and heading bias of this walk, given the positions
        dx = np.diff(x, axis=0)
        kk = known[1:]
        if kk.sum() >= 3:
            dz = (dx[kk, 0] + 1j * dx[kk, 1]) * wm[1:][kk]
            dd = d[1:][kk, 0] + 1j * d[1:][kk, 1]
            den = float((np.abs(dd) ** 2 * wm[1:][kk]).sum())
            if den > 1e-6:
                z = (np.conj(dd) * dz).sum() / den
                s, b = float(np.clip(abs(z), 0.6, 1.5)), float(np.clip(np.angle(z), -np.pi / 3, np.pi / 3))
                zs = s * np.exp(1j * b)
        r = np.hypot(*(x - fix).T)
        sig = 1.0 / np.sqrt(np.maximum(wf, 1e-12))
        robust = np.where(has_fix, np.minimum(1.0, huber_k * sig / np.maximum(r, 1e-9)), 0.0)
    return x


def lsq_history(h: np.ndarray) -> np.ndarray:
    out = h[:, 1:3].copy()
    if len(h) == 0:
        return out
    seg = h[:, 10]
    starts = np.flatnonzero(np.r_[True, seg[1:] != seg[:-1]])
    ends = np.r_[starts[1:], len(h)]
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        out[a:b] = lsq_segment(h[a:b])
    return out


def blend_history(h: np.ndarray) -> np.ndarray:
    """The mean of the two smoothers (RTS over the filter's moments, and the whole-walk least squares)."""
    return 0.5 * (smooth_history(h) + lsq_history(h))
