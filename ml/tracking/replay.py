"""A stored session replayed offline: the same filter as `/locate`'s sessions, then the whole-walk smoother.

Self-maintenance updates (`ml.selfupdate`) turn each stored walk into pseudo-labels: every WiFi query of the
walk gets the smoothed position at its timestamp, which uses the scans before and after it and the phone's
motion in between, so it is far more accurate than the query's own answer.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ml.tracking.filter import Estimate, FilterConfig, Fix, NoPosition, TrackState, step
from ml.tracking.floorplan import Walkable
from ml.tracking.smooth import smoothed_points
from ml.types import SensorData


def scan_key(wifi: Sequence[tuple[str, float]]) -> str | None:
    """Identity of a scan: the same entries again (a re-sent or cached scan) must not count twice."""
    if not wifi:
        return None
    h = hashlib.blake2b(digest_size=12)
    for b, r in sorted(wifi):
        h.update(f"{b}:{r:g};".encode())
    return h.hexdigest()


@dataclass
class WalkQuery:
    """One stored query of a session, in time order: its fix (the model's answer to its scan) if it had one."""

    t_ms: int
    sensors: SensorData | None
    fix: Fix | None
    scan: str | None


def replay(
    queries: Sequence[WalkQuery],
    *,
    key: str,
    plans: dict[str, Walkable] | None,
    cfg: FilterConfig,
    smoother: str = "blend",
) -> tuple[list[Estimate | None], list[Estimate | None]]:
    """(causal, smoothed) estimate per query (None where the session had no position yet, i.e. before its
    first scan). The filter is seeded from `key`, so a replay is deterministic."""
    seed = zlib.crc32(key.encode())
    state: TrackState | None = None
    causal: list[Estimate | None] = []
    answered: list[int] = []
    for i, q in enumerate(queries):
        try:
            state, est = step(
                state, seed=seed, t_ms=q.t_ms, sensors=q.sensors, fix=q.fix, scan_key=q.scan, plans=plans, cfg=cfg
            )
        except NoPosition:
            causal.append(None)
            continue
        causal.append(est)
        answered.append(i)
    smoothed: list[Estimate | None] = [None] * len(queries)
    if state is not None:
        sm = smoothed_points(state, smoother)
        # the history keeps the newest `cfg.max_points`: align from the end
        for i, est in zip(answered[len(answered) - len(sm) :], sm, strict=True):
            smoothed[i] = est
    return causal, smoothed


def fixes_from_prediction(xy: np.ndarray, floor: np.ndarray, error_m: np.ndarray) -> list[Fix]:
    return [Fix(float(p[0]), float(p[1]), str(f), float(e)) for p, f, e in zip(xy, floor, error_m, strict=True)]
