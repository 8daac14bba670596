"""Pedestrian dead reckoning from one sensor window: steps, stride and heading -> a displacement.

Steps are peaks of the low-passed acceleration magnitude (at least `min_step_s` apart); a step's stride
follows Weinberg's rule, K * (a_max - a_min) ** 0.25 over the window; its heading is the direction of the
phone's y axis (top edge) in the east-north plane, from the rotation vector when the window has one, else
from a tilt-compensated compass (accelerometer + magnetometer) whose within-window turns come from the
gyroscope. The stride scale and heading bias of a walker are NOT fitted here: the filter estimates them per
session (each particle carries its own), so this module returns the displacement at scale 1, bias 0.

Windows arrive one after another (one per session query); a step whose peak straddles two windows is found
once because the last samples of a window are carried into the next (`MotionState`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ml.types import SensorData

GRAVITY = 9.80665


@dataclass(frozen=True)
class MotionConfig:
    min_step_s: float = 0.3  # fastest cadence considered a step (~3.3 steps/s)
    peak_threshold: float = 1.0  # m/s^2 above gravity for a peak of the smoothed magnitude to be a step
    smooth_s: float = 0.12  # moving-average length of the magnitude low-pass
    weinberg_k: float = 0.39  # stride = k * (a_max - a_min) ** 0.25 (about 0.7 m for an ordinary walk)
    min_stride_m: float = 0.3
    max_stride_m: float = 1.4
    max_window_s: float = 10.0  # longer windows are refused by the API; here only the last part is used


@dataclass
class MotionState:
    """What one window hands to the next: the newest magnitude samples and the time since the last step."""

    tail: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    since_step_s: float = 10.0


@dataclass
class Displacement:
    dx: float  # metres east at stride scale 1, heading bias 0
    dy: float  # metres north
    steps: int
    duration_s: float
    heading: float | None  # radians, atan2(north, east) of the last step (None: no heading source)


def window_duration_s(s: SensorData) -> float:
    n = max((len(a) for a in (s.accel, s.gyro, s.mag, s.rotation) if a is not None), default=0)
    return n / float(s.rate_hz) if s.rate_hz > 0 else 0.0


def displacement(s: SensorData, state: MotionState, cfg: MotionConfig = MotionConfig()) -> Displacement:
    """Steps and their east/north displacement in this window; `state` is updated in place."""
    dur = window_duration_s(s)
    if s.accel is None or len(s.accel) < 2:
        return Displacement(0.0, 0.0, 0, dur, None)
    rate = float(s.rate_hz)
    keep = max(2, int(cfg.max_window_s * rate))
    accel = _last(s.accel, keep)
    if accel is None or len(accel) < 2:
        return Displacement(0.0, 0.0, 0, dur, None)
    mag_now = np.linalg.norm(accel, axis=1) - GRAVITY
    w = max(1, round(cfg.smooth_s * rate))
    tail = state.tail.astype(np.float64)
    sig = np.concatenate([tail, mag_now])
    smooth = np.convolve(sig, np.ones(w) / w, mode="same") if len(sig) >= w else sig
    # candidates: strict local maxima above threshold; the first len(tail)-1 samples were judged last window
    start = max(1, len(tail) - 1)
    idx = np.arange(start, len(smooth) - 1)
    is_peak = (smooth[idx] > smooth[idx - 1]) & (smooth[idx] >= smooth[idx + 1]) & (smooth[idx] > cfg.peak_threshold)
    peaks = idx[is_peak]
    # time of each sample relative to the start of this window's own samples
    t_rel = (np.arange(len(sig)) - len(tail)) / rate
    steps: list[int] = []
    last_t = -state.since_step_s
    for p in peaks.tolist():
        if t_rel[p] - last_t >= cfg.min_step_s:
            steps.append(p)
            last_t = t_rel[p]
    amp = float(smooth[len(tail) :].max() - smooth[len(tail) :].min()) if len(mag_now) else 0.0
    stride = float(np.clip(cfg.weinberg_k * max(amp, 0.0) ** 0.25, cfg.min_stride_m, cfg.max_stride_m))
    headings = _headings(s, keep, rate, len(accel))
    dx = dy = 0.0
    heading = None
    if headings is not None and not np.isfinite(headings).all():
        headings = None  # e.g. a degenerate quaternion: no heading rather than a NaN position
    if headings is not None:
        for p in steps:
            i = int(np.clip(p - len(tail), 0, len(headings) - 1))
            dx += stride * np.cos(headings[i])
            dy += stride * np.sin(headings[i])
        heading = float(headings[-1])
    # carry: enough samples for the moving average plus one to judge the window's last sample next time
    state.tail = sig[-(w + 2) :].astype(np.float32)
    dur_now = len(mag_now) / rate
    state.since_step_s = float(min(dur_now - last_t, 10.0))
    return Displacement(dx, dy, len(steps) if headings is not None else 0, dur, heading)


def _last(a: np.ndarray | None, keep: int) -> np.ndarray | None:
    """The newest `keep` samples of one stream as float64 (each stream has its own length: a window's
    modalities need not have the same number of samples)."""
    if a is None or len(a) == 0:
        return None
    return np.asarray(a, dtype=np.float64)[-keep:]


def _headings(s: SensorData, keep: int, rate: float, n: int) -> np.ndarray | None:
    """Per-sample heading (radians from east, counter-clockwise) of the phone's y axis, length n."""
    q = _last(s.rotation, keep)
    if q is not None:
        return _resize(rotation_heading(q), n)
    accel, mag = _last(s.accel, keep), _last(s.mag, keep)
    if accel is None or mag is None:
        return None
    g = accel.mean(axis=0)
    m = mag.mean(axis=0)
    east = np.cross(m, g)
    ne = np.linalg.norm(east)
    if ne < 1e-6 or np.linalg.norm(g) < 1e-6:
        return None
    east /= ne
    north = np.cross(g / np.linalg.norm(g), east)
    base = float(np.arctan2(north[1], east[1]))  # device y axis in the world: (E_y, N_y)
    gy = _last(s.gyro, keep)
    if gy is None or len(gy) < 2:
        return np.full(n, base)
    yaw_rate = gy @ (g / np.linalg.norm(g))  # rotation about the up axis (rad/s, counter-clockwise)
    yaw = np.cumsum(yaw_rate) / rate
    yaw -= yaw.mean()  # the compass gives the window's mean heading; the gyro the turns inside it
    return _resize(base + yaw, n)


def rotation_heading(q: np.ndarray) -> np.ndarray:
    """Heading of the device y axis from Android rotation-vector samples [x, y, z(, w)] (ENU world frame)."""
    x, y, z = q[:, 0], q[:, 1], q[:, 2]
    w = q[:, 3] if q.shape[1] >= 4 else np.sqrt(np.clip(1.0 - x * x - y * y - z * z, 0.0, None))
    east = 2.0 * (x * y - w * z)
    north = 1.0 - 2.0 * (x * x + z * z)
    return np.arctan2(north, east)


def _resize(a: np.ndarray, n: int) -> np.ndarray:
    if len(a) == n:
        return a
    if len(a) == 1:
        return np.full(n, a[0])
    # unwrap so that interpolation between -pi and pi does not swing through zero
    u = np.unwrap(a)
    return np.interp(np.linspace(0, len(a) - 1, n), np.arange(len(a)), u)
