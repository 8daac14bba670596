"""Per-session particle filter: WiFi fixes + PDR displacements + the walkable area -> a causal track.

Each particle is (x, y, stride scale, heading bias): the filter estimates the walker's stride scale and the
phone's heading bias per session (particles whose scale/bias explain the WiFi fixes survive), so nothing is
fitted per site by hand. One `step` per session query:

1. predict: move every particle by the window's displacement, scaled and rotated by its own scale/bias, plus
   noise; without a sensor window a random walk sized by the elapsed time;
2. walkable area (soft): particles off the plan are down-weighted, not killed (a hard wall locks a walk into
   the wrong corridor when the plan or the track is slightly off);
3. WiFi (only a new scan: the same scan sent again is not counted twice): floor vote with hysteresis (the
   floor changes after `floor_votes` consecutive fixes on another floor; the cloud restarts there), then the
   likelihood of the fix — a mixture over the model's k nearest survey points when it gives them, else a
   Gaussian of the fix's own error estimate — with a heavy tail so one wild fix cannot empty the cloud;
   a few particles are re-drawn around every fix, and the whole cloud restarts there when fix and track
   disagree for `reinit_after` fixes in a row;
4. resample (systematic) when the effective sample size falls under half.

The estimate is the weighted mean; `error_m` comes from the cloud's spread. Every answered point is kept
(with the filtered covariance and the mean motion) for the forward-backward smoother (`smooth.py`).
State round-trips through `to_bytes`/`from_bytes` (Redis in full mode) and is a few kB plus 48 bytes a point.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import asdict, dataclass, field

import numpy as np

from ml.tracking.floorplan import Walkable
from ml.tracking.motion import Displacement, MotionConfig, MotionState, displacement
from ml.types import SensorData

_FORMAT = 1
_LEN = struct.Struct("<I")
# history columns: t_ms, x, y, error_m, Pxx, Pxy, Pyy, ux, uy, q, segment, floor index,
# then the raw inputs for the whole-walk smoother: PDR dx, dy at scale 1 / bias 0 (NaN: no window),
# the fix used at this point x, y, sigma (NaN: none)
_H = 17


@dataclass(frozen=True)
class FilterConfig:
    particles: int = 400
    init_spread: float = 1.0  # initial cloud radius = this x the first fix's error estimate
    min_fix_sigma_m: float = 2.0  # floor of the measurement noise
    fix_sigma_scale: float = 2.0  # measurement noise = this x the fix's error estimate
    neighbour_sigma_m: float = 4.0  # width of each survey point of a k-nearest mixture
    outlier_weight: float = 0.05  # heavy tail of the WiFi likelihood (relative to its peak)
    off_plan_weight: float = 0.15  # soft constraint: likelihood factor of a particle off the walkable area
    step_noise_m: float = 0.15  # per-step position noise
    still_noise_mps: float = 0.1  # position noise per second without steps
    blind_speed_mps: float = 1.0  # random walk per second when the query has no sensor window
    scale_sd: float = 0.15  # initial spread of stride scale (around 1)
    scale_walk: float = 0.01  # its per-query random walk
    bias_sd: float = math.radians(15.0)  # initial spread of heading bias
    bias_walk: float = math.radians(1.0)
    inject_fraction: float = 0.02  # particles re-drawn around each fix
    reinit_after: int = 6  # consecutive disagreeing fixes before the cloud restarts at the fix
    reinit_distance: float = 3.0  # "disagree" = fix farther than this x (fix error + cloud spread)
    floor_votes: int = 2  # consecutive fixes on another floor before the floor changes...
    settle_fixes: int = 3  # ...once this many fixes agreed with the current floor (before that, one vote)
    max_points: int = 7200  # history kept for the smoother (2 h at 1 Hz)
    # A gap longer than this between two queries of a session (client clock): the walker may be anywhere, so the
    # motion noise stops growing at this many seconds and the next WiFi fix restarts the cloud at the fix.
    max_gap_s: float = 60.0
    error_floor_m: float = 1.0
    motion: MotionConfig = field(default_factory=MotionConfig)


@dataclass
class Fix:
    """One WiFi answer of the site's model."""

    x: float
    y: float
    floor: str
    error_m: float
    neighbours: np.ndarray | None = None  # (k, 2) survey positions on the fix's floor
    neighbour_w: np.ndarray | None = None  # (k,) weights summing to 1


@dataclass
class Estimate:
    t_ms: int
    x: float
    y: float
    floor: str
    error_m: float


@dataclass
class TrackState:
    seed: int
    particles: np.ndarray  # (N, 4) float32: x, y, scale, bias
    weights: np.ndarray  # (N,) float64
    floor: str
    t_ms: int
    n: int = 0  # queries answered
    segment: int = 0
    floors: list[str] = field(default_factory=list)  # floor labels referenced by history
    cand_floor: str | None = None
    cand_votes: int = 0
    floor_agree: int = 1  # fixes that agreed with the current floor since it was set
    disagree: int = 0
    last_scan: str | None = None
    lost: bool = False  # set by a gap longer than max_gap_s: the next fix on this floor restarts the cloud
    motion: MotionState = field(default_factory=MotionState)
    history: np.ndarray = field(default_factory=lambda: np.zeros((0, _H), dtype=np.float64))

    # -- serialisation: a JSON header and raw little-endian arrays (no pickle)
    def to_bytes(self) -> bytes:
        head = {
            "v": _FORMAT,
            "seed": self.seed,
            "floor": self.floor,
            "t_ms": self.t_ms,
            "n": self.n,
            "segment": self.segment,
            "floors": self.floors,
            "cand_floor": self.cand_floor,
            "cand_votes": self.cand_votes,
            "floor_agree": self.floor_agree,
            "disagree": self.disagree,
            "last_scan": self.last_scan,
            "lost": self.lost,
            "since_step_s": self.motion.since_step_s,
            "shapes": [list(self.particles.shape), len(self.motion.tail), list(self.history.shape)],
        }
        hb = json.dumps(head).encode()
        return b"".join(
            [
                _LEN.pack(len(hb)),
                hb,
                self.particles.astype("<f4").tobytes(),
                self.weights.astype("<f8").tobytes(),
                self.motion.tail.astype("<f4").tobytes(),
                self.history.astype("<f8").tobytes(),
            ]
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> TrackState:
        (hl,) = _LEN.unpack_from(blob)
        head = json.loads(blob[4 : 4 + hl])
        if head.get("v") != _FORMAT:
            raise ValueError(f"unknown track state format {head.get('v')!r}")
        (pn, pc), nt, (hn, hc) = head["shapes"]
        off = 4 + hl

        def take(dtype: str, count: int) -> np.ndarray:
            nonlocal off
            a = np.frombuffer(blob, dtype=dtype, count=count, offset=off)
            off += a.nbytes
            return a

        particles = take("<f4", pn * pc).reshape(pn, pc).copy()
        weights = take("<f8", pn).copy()
        tail = take("<f4", nt).copy()
        history = take("<f8", hn * hc).reshape(hn, hc).copy()
        return cls(
            seed=head["seed"],
            particles=particles,
            weights=weights,
            floor=head["floor"],
            t_ms=head["t_ms"],
            n=head["n"],
            segment=head["segment"],
            floors=list(head["floors"]),
            cand_floor=head["cand_floor"],
            cand_votes=head["cand_votes"],
            floor_agree=head["floor_agree"],
            disagree=head["disagree"],
            last_scan=head["last_scan"],
            lost=bool(head.get("lost", False)),
            motion=MotionState(tail=tail, since_step_s=head["since_step_s"]),
            history=history,
        )

    def points(self) -> list[Estimate]:
        return [
            Estimate(int(r[0]), float(r[1]), float(r[2]), self.floors[int(r[11])], float(r[3])) for r in self.history
        ]


class NoPosition(Exception):
    """A session's first query must carry a WiFi scan the model can place: motion alone has no origin."""


def _rng(state_seed: int, n: int) -> np.random.Generator:
    return np.random.default_rng([state_seed & 0xFFFFFFFF, n])


def _cloud(fix: Fix, cfg: FilterConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    sd = max(fix.error_m, cfg.min_fix_sigma_m) * cfg.init_spread
    p = np.empty((n, 4), dtype=np.float32)
    if fix.neighbours is not None and len(fix.neighbours):
        w = fix.neighbour_w if fix.neighbour_w is not None else np.full(len(fix.neighbours), 1 / len(fix.neighbours))
        pick = rng.choice(len(fix.neighbours), size=n, p=w / w.sum())
        p[:, :2] = fix.neighbours[pick] + rng.normal(0, cfg.neighbour_sigma_m, (n, 2))
    else:
        p[:, :2] = np.array([fix.x, fix.y]) + rng.normal(0, sd, (n, 2))
    p[:, 2] = 1.0 + rng.normal(0, cfg.scale_sd, n)
    p[:, 3] = rng.normal(0, cfg.bias_sd, n)
    return p


def start(seed: int, t_ms: int, fix: Fix, cfg: FilterConfig = FilterConfig()) -> TrackState:
    rng = _rng(seed, 0)
    p = _cloud(fix, cfg, rng, cfg.particles)
    return TrackState(
        seed=seed, particles=p, weights=np.full(cfg.particles, 1.0 / cfg.particles), floor=fix.floor, t_ms=t_ms
    )


def step(
    state: TrackState | None,
    *,
    seed: int,
    t_ms: int,
    sensors: SensorData | None,
    fix: Fix | None,
    scan_key: str | None,
    plans: dict[str, Walkable] | None = None,
    cfg: FilterConfig = FilterConfig(),
    motion: Displacement | None = None,
) -> tuple[TrackState, Estimate]:
    """Advance the session to `t_ms` with this query's window and (new) fix; returns the causal estimate.

    `motion` overrides the displacement computed from `sensors` (a learned displacement model, or a test)."""
    if state is None:
        if fix is None:
            raise NoPosition("the session has no position yet: its first query needs a WiFi scan")
        state = start(seed, t_ms, fix, cfg)
        state.last_scan = scan_key
        sig = max(fix.error_m * cfg.fix_sigma_scale, cfg.min_fix_sigma_m)
        return state, _record(state, t_ms, np.zeros(2), 0.0, cfg, (math.nan, math.nan), (fix.x, fix.y, sig))
    rng = _rng(state.seed, state.n + 1)
    dt = max(0.0, (t_ms - state.t_ms) / 1000.0)
    if dt > cfg.max_gap_s:
        state.lost = True
        dt = cfg.max_gap_s
    p, w = state.particles, state.weights
    before = (w[:, None] * p[:, :2]).sum(axis=0)
    start_xy = p[:, :2].copy()
    # 1. predict
    if sensors is not None or motion is not None:
        d = motion if motion is not None else displacement(sensors, state.motion, cfg.motion)  # type: ignore[arg-type]
        if not (math.isfinite(d.dx) and math.isfinite(d.dy)):
            d = Displacement(0.0, 0.0, 0, d.duration_s, None)  # never a NaN track, whatever the window holds
        raw = (d.dx, d.dy)
        n = len(p)
        p[:, 2] += rng.normal(0, cfg.scale_walk, n)
        p[:, 3] += rng.normal(0, cfg.bias_walk, n)
        c, s = np.cos(p[:, 3]), np.sin(p[:, 3])
        p[:, 0] += p[:, 2] * (c * d.dx - s * d.dy)
        p[:, 1] += p[:, 2] * (s * d.dx + c * d.dy)
        noise = math.sqrt(d.steps * cfg.step_noise_m**2 + (cfg.still_noise_mps * max(dt, 0.2)) ** 2)
        q = noise**2 + (0.1 * math.hypot(d.dx, d.dy)) ** 2
    else:
        noise = cfg.blind_speed_mps * max(dt, 0.2)
        q = noise**2
        raw = (math.nan, math.nan)
    p[:, :2] += rng.normal(0, noise, (len(p), 2))
    u = (w[:, None] * p[:, :2]).sum(axis=0) - before  # the motion alone: what the smoother's model predicts
    # 2. walkable area (soft)
    plan = plans.get(state.floor) if plans else None
    if plan is not None:
        # the end point and two points on the way: a move through a shop counts as off the plan
        ok = plan.contains(p[:, :2])
        for f in (1 / 3, 2 / 3):
            ok &= plan.contains(start_xy + f * (p[:, :2] - start_xy))
        w = w * np.where(ok, 1.0, cfg.off_plan_weight)
        w /= w.sum()
    # 3. WiFi
    used: tuple[float, float, float] | None = None
    if fix is not None and scan_key != state.last_scan:
        state.last_scan = scan_key
        segment = state.segment
        p, w = _measure(state, p, w, fix, cfg, rng, plans)
        if fix.floor == state.floor:
            used = (fix.x, fix.y, max(fix.error_m * cfg.fix_sigma_scale, cfg.min_fix_sigma_m))
            if state.segment != segment:
                raw = (math.nan, math.nan)  # a restart: nothing links this point to the previous one
    state.particles, state.weights = p, w
    # 4. resample
    if 1.0 / float((w**2).sum()) < 0.5 * len(w):
        state.particles = _systematic(p, w, rng)
        state.weights = np.full(len(w), 1.0 / len(w))
    state.t_ms = t_ms
    return state, _record(state, t_ms, u, q, cfg, raw, used)


def _measure(
    state: TrackState,
    p: np.ndarray,
    w: np.ndarray,
    fix: Fix,
    cfg: FilterConfig,
    rng: np.random.Generator,
    plans: dict[str, Walkable] | None,
) -> tuple[np.ndarray, np.ndarray]:
    if fix.floor != state.floor:
        if state.cand_floor == fix.floor:
            state.cand_votes += 1
        else:
            state.cand_floor, state.cand_votes = fix.floor, 1
        # a floor not yet confirmed by a few fixes (e.g. the session's first answer) yields to one vote
        needed = cfg.floor_votes if state.floor_agree >= cfg.settle_fixes else 1
        if state.cand_votes < needed:
            return p, w  # its x, y are on another floor: not a measurement of this one
        state.floor = fix.floor
        state.cand_floor, state.cand_votes, state.disagree, state.floor_agree = None, 0, 0, 1
        state.segment += 1
        state.lost = False
        return _cloud(fix, cfg, rng, len(p)), np.full(len(p), 1.0 / len(p))
    state.cand_floor, state.cand_votes = None, 0
    state.floor_agree += 1
    mean = (w[:, None] * p[:, :2]).sum(axis=0)
    spread = math.sqrt(float((w * ((p[:, :2] - mean) ** 2).sum(axis=1)).sum()))
    sigma = max(fix.error_m * cfg.fix_sigma_scale, cfg.min_fix_sigma_m)
    if math.hypot(fix.x - mean[0], fix.y - mean[1]) > cfg.reinit_distance * (sigma + spread):
        state.disagree += 1
    else:
        state.disagree = 0
    if state.disagree >= cfg.reinit_after or state.lost:
        state.disagree, state.lost = 0, False
        state.segment += 1
        return _cloud(fix, cfg, rng, len(p)), np.full(len(p), 1.0 / len(p))
    lik = _likelihood(p[:, :2], fix, sigma, cfg)
    w = w * (lik + cfg.outlier_weight)
    w /= w.sum()
    k = int(cfg.inject_fraction * len(p))
    if k:
        idx = rng.choice(len(p), size=k, replace=False)
        fresh = _cloud(fix, cfg, rng, k)
        fresh[:, 2:] = p[rng.choice(len(p), size=k, p=w), 2:]  # keep the learned scale/bias
        p[idx] = fresh
        w[idx] = 1.0 / len(p)
        w /= w.sum()
    return p, w


def _likelihood(xy: np.ndarray, fix: Fix, sigma: float, cfg: FilterConfig) -> np.ndarray:
    if fix.neighbours is not None and len(fix.neighbours):
        nb = fix.neighbours
        nw = fix.neighbour_w if fix.neighbour_w is not None else np.full(len(nb), 1.0 / len(nb))
        s2 = 2.0 * max(cfg.neighbour_sigma_m, 0.5 * sigma) ** 2
        d2 = ((xy[:, None, :] - nb[None, :, :]) ** 2).sum(axis=2)
        return (np.exp(-d2 / s2) * nw[None, :]).sum(axis=1) / nw.max()
    d2 = (xy[:, 0] - fix.x) ** 2 + (xy[:, 1] - fix.y) ** 2
    return np.exp(-d2 / (2.0 * sigma * sigma))


def _systematic(p: np.ndarray, w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n = len(w)
    c = np.cumsum(w)
    c[-1] = 1.0
    idx = np.searchsorted(c, (rng.random() + np.arange(n)) / n)
    return p[idx].copy()


def _record(
    state: TrackState,
    t_ms: int,
    u: np.ndarray,
    q: float,
    cfg: FilterConfig,
    raw: tuple[float, float],
    used: tuple[float, float, float] | None,
) -> Estimate:
    p, w = state.particles, state.weights
    m = (w[:, None] * p[:, :2]).sum(axis=0)
    d = p[:, :2] - m
    cov = (w[:, None, None] * (d[:, :, None] * d[:, None, :])).sum(axis=0)
    # expected distance of a 2-D Gaussian ~ 0.886 sqrt(trace); particles under-spread, so floor it
    err = max(0.886 * math.sqrt(max(float(cov[0, 0] + cov[1, 1]), 0.0)), cfg.error_floor_m)
    if state.floor not in state.floors:
        state.floors.append(state.floor)
    row = np.array(
        [
            t_ms,
            m[0],
            m[1],
            err,
            cov[0, 0],
            cov[0, 1],
            cov[1, 1],
            u[0],
            u[1],
            q,
            state.segment,
            state.floors.index(state.floor),
            raw[0],
            raw[1],
            *(used if used is not None else (math.nan, math.nan, math.nan)),
        ],
        dtype=np.float64,
    )
    state.history = np.vstack([state.history[-(cfg.max_points - 1) :], row[None]])
    state.n += 1
    return Estimate(t_ms, float(m[0]), float(m[1]), state.floor, round(err, 3))


def state_dict(cfg: FilterConfig) -> dict[str, object]:
    return asdict(cfg)
