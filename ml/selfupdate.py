"""Self-maintenance updates: a site's model learns from the walks of the phones that use it.

One update (the service's job, `app/services/cotrain.py`, calls `split_walks`, `learn` and `traffic_scores`):

1. **Walks.** The stored queries of each tracking session, in time order, are replayed through the same particle
   filter as `/locate` with the active model's answers, then smoothed over the whole walk (`ml.tracking.replay`).
   Each WiFi query of a walk gets the smoothed position at its timestamp and the track's uncertainty there. A
   scan unlike anything in the survey (`Coverage`: farther from the nearest survey fingerprint than 90% of the
   survey's own holdout scans) gets a fix that snaps to the edge of the survey, so its fix counts with an error of
   at least `outside_sigma_m` (40 m) and the phone's motion carries the track there: that is where the survey has
   nothing and the walks teach the most.
2. **Guard walks.** The newest `guard_fraction` of the walks (at least one when there are two or more) are held out:
   the update never sees them; they judge it (`traffic_score`): how far a model's single-query answers to their
   scans fall from their smoothed tracks (made with the active model's answers, each point without its own fix),
   counted on the scans that look like the survey's, where those tracks rest on good fixes. No labels are needed,
   and it sees the present (new phones, moved APs), which the survey holdout cannot.
3. **Pseudo-labels.** The other walks' WiFi queries whose track uncertainty is at most `max_label_error_m` (12 m) become
   labelled fingerprints (the smoothed position, the floor of the track). Single queries outside sessions add
   pseudo-labels only where the model has a test for them: iToLoc's co-training (agreement, confidence, dropout
   stability); with `single_query_labels: "self"` any model uses its own answers whose error estimate is at most
   `self_label_max_error_m` (a weak baseline, kept for comparison).
4. **AP churn.** An access point that the survey heard where the walks' pseudo-labels put recent queries (within
   `churn_radius_m`, often enough to expect `churn_min_expected` hearings), and that no recent query heard at all,
   has vanished: its readings are dropped from the survey rows the update trains on (`vanished_aps`).
5. **Candidate.** The survey (never replaced) plus the pseudo-labels, retrained with the active model's own
   settings: `wknn` builds a new radio map, `dnn`/`cnnloc`/`mtloc` retrain their recipe (scratch) on both, and
   `itoloc` co-trains with the pseudo-labelled rows beside its survey rows. As in a finetune, the candidate is
   first fitted without the survey holdout (scored there), then refitted on everything where the model refits.

`label_noise_m` adds seeded Gaussian noise to the pseudo-labels: a deliberately harmful setting that exists so the
guard can be shown to reject an update that hurts.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from ml.data.features import FingerprintSet, build_set
from ml.errors import InsufficientData, InvalidParams
from ml.finetune import span as _span
from ml.models.base import LocModel, Prediction, ProgressFn, QueryBatch, no_progress
from ml.models.wknn import WKNN
from ml.params import check_types
from ml.tracking.filter import Estimate, FilterConfig, Fix
from ml.tracking.floorplan import Walkable
from ml.tracking.replay import WalkQuery, replay, scan_key
from ml.types import Fingerprint

SINGLE_QUERY_LABELS = ("auto", "off", "self")
GUARD_REFERENCES = ("active", "own", "both")


@dataclass(frozen=True)
class UpdateConfig:
    max_label_error_m: float = 12.0  # pseudo-labels whose track uncertainty is larger are not used
    min_walk_queries: int = 5  # shorter walks teach nothing the single queries do not
    guard_fraction: float = 0.25  # newest walks held out to judge the update on recent traffic
    max_guard_walks: int = 50
    # the recent-traffic score decides only over at least this many held-out scans like the survey's (below, the
    # survey holdout alone decides). 1, the default, lets a handful decide: noisy, but on ILC site2 F2 a 7-scan score
    # was all that caught a harmful mtloc update (+13.7% on the later walks), which 20 promoted (cotrain.md)
    guard_min_scans: int = 1
    single_query_labels: str = "auto"  # auto: the model's own test (itoloc co-training), else none | off | self
    self_label_max_error_m: float = 4.0  # "self": a model's answers with at most this error estimate
    churn: bool = True
    churn_radius_m: float = 5.0  # vanished: recent walks passed where the survey (within this) heard the AP...
    churn_min_expected: float = 20.0  # ...often enough to expect this many hearings, and heard it nowhere
    rounds: int = 1  # label -> retrain rounds (round r tracks the walks with round r-1's model; 2+ measured no better)
    label_noise_m: float = 0.0  # deliberately harmful (shows the guard at work): noise on the pseudo-labels
    particles: int = 1500  # offline: more than a live session's 400 (ILC site1 F2-F4: steadier labels across seeds)
    # labels only within this of an in-coverage scan of the walk (0 = off, the default: on ILC site1 F4 the walks it
    # drops, though labelled far off, still made the later walks better in an in-process sweep)
    anchor_s: float = 0.0
    coverage_quantile: float = 0.9  # "in coverage": as close to the survey as this quantile of its holdout scans
    outside_sigma_m: float = 40.0  # fixes of scans outside coverage count with at least this error (0 = off)
    # The held-out walks' tracks the guard compares answers with: made from the mean of both models' answers ("both",
    # the default: neither model is favoured), the active model's ("active": favours it; on ILC site1 F1 it scored a
    # 14% better radio map 11% worse, and it rejected a 16% better cnnloc on F3) or each model's own ("own": its
    # answers against a track made from its other answers and the phone's motion; on ILC site1 F3 it promoted a
    # noisy-label update that made the later walks worse).
    guard_reference: str = "both"
    smoother: str = "blend"  # the whole-walk smoother behind the pseudo-labels: blend | rts | lsq (ml.tracking.smooth)

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    @classmethod
    def split_params(cls, params: dict[str, Any]) -> tuple[UpdateConfig, dict[str, Any]]:
        """(this config, the rest: the model's own co-training params, checked by the model). An integral float
        for an int setting (`particles`, `rounds`, ...) is taken as that int."""
        names = cls.names()
        mine = check_types(cls, {k: v for k, v in params.items() if k in names}, "update")
        cfg = replace(cls(), **mine)
        if cfg.single_query_labels not in SINGLE_QUERY_LABELS:
            raise InvalidParams(f"single_query_labels must be one of {SINGLE_QUERY_LABELS}")
        if not 0 <= cfg.guard_fraction < 1:
            raise InvalidParams("guard_fraction must be in [0, 1)")
        if cfg.max_label_error_m <= 0 or cfg.self_label_max_error_m <= 0 or cfg.label_noise_m < 0:
            raise InvalidParams("max_label_error_m and self_label_max_error_m must be > 0, label_noise_m >= 0")
        if cfg.guard_reference not in GUARD_REFERENCES:
            raise InvalidParams(f"guard_reference must be one of {GUARD_REFERENCES}")
        if cfg.smoother not in ("blend", "rts", "lsq"):
            raise InvalidParams("smoother must be one of blend, rts, lsq")
        if cfg.particles < 10 or cfg.particles > 5000:
            raise InvalidParams("particles must be in [10, 5000]")
        if cfg.min_walk_queries < 1 or cfg.max_guard_walks < 1 or cfg.guard_min_scans < 1 or not 1 <= cfg.rounds <= 5:
            raise InvalidParams("min_walk_queries, max_guard_walks and guard_min_scans must be >= 1, rounds in [1, 5]")
        if cfg.anchor_s < 0 or cfg.outside_sigma_m < 0 or not 0 < cfg.coverage_quantile <= 1:
            raise InvalidParams("anchor_s and outside_sigma_m must be >= 0, coverage_quantile in (0, 1]")
        if cfg.churn_radius_m <= 0 or cfg.churn_min_expected <= 0:
            raise InvalidParams("churn_radius_m and churn_min_expected must be > 0")
        return cfg, {k: v for k, v in params.items() if k not in names}


@dataclass
class Walk:
    """One stored session: its queries in time order (`Fingerprint` with timestamp, wifi, sensors; no labels)."""

    key: str
    queries: list[Fingerprint]
    ids: list[str] = field(default_factory=list)  # the stored queries' ids, same order

    @property
    def minutes(self) -> float:
        ts = [q.timestamp for q in self.queries if q.timestamp is not None]
        return (max(ts) - min(ts)) / 60000.0 if len(ts) > 1 else 0.0


@dataclass
class Tracked:
    """A walk's WiFi queries (their rows) and the smoothed track at each."""

    walk: Walk
    rows: list[int]  # indices into walk.queries of the queries that carry WiFi
    track: list[Estimate | None]  # smoothed estimate per row (None: before the first fix)
    answers: list[tuple[str, str | None]] = field(default_factory=list)  # the model's (floor, building) per row


def split_walks(walks: Sequence[Walk], cfg: UpdateConfig) -> tuple[list[Walk], list[Walk]]:
    """(learn from, guard): the newest `guard_fraction` of the walks long enough to use (by first timestamp)
    judge the update; at least one when there are two or more."""
    usable = sorted(
        (w for w in walks if len(w.queries) >= cfg.min_walk_queries), key=lambda w: w.queries[0].timestamp or 0
    )
    n_guard = 0
    if len(usable) >= 2 and cfg.guard_fraction > 0:
        n_guard = min(max(1, round(len(usable) * cfg.guard_fraction)), cfg.max_guard_walks, len(usable) - 1)
    return usable[: len(usable) - n_guard], usable[len(usable) - n_guard :]


@dataclass
class Pair:
    """Two models answering together: the guard's shared reference (`guard_reference: "both"`). Where they agree on
    the floor, the mean of their positions with the larger of their error estimates (at least half the distance
    between them); elsewhere the first model's answer."""

    first: LocModel
    second: LocModel


def _answers(model: LocModel | Pair, fps: list[Fingerprint]) -> Prediction:
    if isinstance(model, Pair):
        a, b = _answers(model.first, fps), _answers(model.second, fps)
        same = np.array([str(x) == str(y) for x, y in zip(a.floor, b.floor, strict=True)], dtype=bool)
        gap = np.hypot(*(a.xy - b.xy).T)
        err = np.maximum(np.maximum(a.error_m, b.error_m), gap / 2)
        return Prediction(
            xy=np.where(same[:, None], (a.xy + b.xy) / 2, a.xy),
            floor=a.floor,
            building=a.building,
            error_m=np.where(same, err, a.error_m),
        )
    fs = build_set(fps, aps=model.aps)
    return model.predict(QueryBatch.from_set(fs))


def track(
    model: LocModel | Pair,
    walks: Sequence[Walk],
    plans: dict[str, Walkable] | None,
    cfg: UpdateConfig,
    *,
    cross: bool = False,
    coverage: Coverage | None = None,
) -> list[Tracked]:
    """Replay every walk through the session filter with `model`'s answers and smooth it.

    `cross`: each query's track point comes from a replay without its own fix (the walk's scans split into two
    interleaved halves, each half tracked from the other half's fixes plus the motion), so that a model's answer is
    not compared with a track built from that very answer (the guard's reference)."""
    fcfg = FilterConfig(particles=cfg.particles)
    out = []
    for w in walks:
        rows = [i for i, q in enumerate(w.queries) if q.wifi]
        if not rows:
            continue
        pred = _answers(model, [w.queries[i] for i in rows])
        err = np.asarray(pred.error_m, dtype=np.float64)
        if coverage is not None and cfg.outside_sigma_m > 0:
            # a fix for a scan unlike the survey snaps to the nearest surveyed place: barely trust it
            err = np.where(coverage.inside([w.queries[i] for i in rows]), err, np.maximum(err, cfg.outside_sigma_m))
        fix_of = {
            i: Fix(float(pred.xy[j, 0]), float(pred.xy[j, 1]), str(pred.floor[j]), float(err[j]))
            for j, i in enumerate(rows)
        }
        parity = {i: j % 2 for j, i in enumerate(rows)}
        result: dict[int, Estimate | None] = {}
        for half in (0, 1) if cross else (None,):
            seq = [
                WalkQuery(
                    int(q.timestamp or 0),
                    q.sensors,
                    fix_of.get(i) if half is None or parity.get(i) != half else None,
                    scan_key([(r.bssid, r.rssi) for r in q.wifi]) if half is None or parity.get(i) != half else None,
                )
                for i, q in enumerate(w.queries)
            ]
            _, smoothed = replay(seq, key=w.key, plans=plans, cfg=fcfg, smoother=cfg.smoother)
            for i in rows:
                if half is None or parity[i] == half:
                    result[i] = smoothed[i]
        answers = [(str(f), None if b is None else str(b)) for f, b in zip(pred.floor, pred.building, strict=True)]
        out.append(Tracked(w, rows, [result[i] for i in rows], answers))
    return out


def _building_of_floor(tracked: Sequence[Tracked]) -> dict[str, str | None]:
    """Floor label -> building, from the model's own answers (ILC sites have none; UJI floors repeat per
    building, so the most frequent building answered with that floor)."""
    votes: dict[str, Counter[str | None]] = defaultdict(Counter)
    for t in tracked:
        for f, b in t.answers:
            votes[f][b] += 1
    return {f: c.most_common(1)[0][0] for f, c in votes.items()}


@dataclass
class Coverage:
    """Does a scan look like the survey? Its Sørensen distance (powed RSSI) to the nearest survey fingerprint,
    against `coverage_quantile` of the distances of the survey's own holdout scans to the rest of the survey.

    A walk's track is anchored only near its in-coverage scans: far from the survey, every fix snaps to the nearest
    surveyed place and the track follows (on ILC site1 F4, walks 100 m from any survey point were tracked with
    4-6 m of spread and labelled 110 m off), so labels count only within `anchor_s` of an in-coverage scan, where
    the phone's motion carries the anchor."""

    index: WKNN
    threshold: float

    @classmethod
    def fit(cls, survey: list[Fingerprint], holdout: np.ndarray, cfg: UpdateConfig) -> Coverage | None:
        if (cfg.anchor_s <= 0 and cfg.outside_sigma_m <= 0) or len(holdout) == 0 or not survey:
            return None
        fs = build_set(survey)
        index = WKNN.fit(fs, {"tune": False, "calibrate": False}, holdout=holdout)
        d = index.nearest_distance(QueryBatch.from_set(fs.subset(np.asarray(holdout, dtype=np.int64))))
        d = d[np.isfinite(d)]
        if not len(d):
            return None
        return cls(index, float(np.quantile(d, cfg.coverage_quantile)))

    def inside(self, fps: list[Fingerprint]) -> np.ndarray:
        return self.index.nearest_distance(QueryBatch.from_set(build_set(fps, aps=self.index.aps))) <= self.threshold


def _anchored(t: Tracked, coverage: Coverage | None, anchor_s: float) -> np.ndarray:
    """Per WiFi row of the walk: within `anchor_s` of one of the walk's in-coverage scans."""
    if coverage is None:
        return np.ones(len(t.rows), dtype=bool)
    ts = np.array([t.walk.queries[i].timestamp or 0 for i in t.rows], dtype=np.float64)
    inside = coverage.inside([t.walk.queries[i] for i in t.rows])
    if not inside.any():
        return np.zeros(len(t.rows), dtype=bool)
    gap = np.abs(ts[:, None] - ts[inside][None, :]).min(axis=1)
    return gap <= anchor_s * 1000.0


def pseudo_labels(
    tracked: Sequence[Tracked], cfg: UpdateConfig, seed: int = 0, coverage: Coverage | None = None
) -> list[Fingerprint]:
    """Labelled fingerprints from the smoothed tracks: uncertainty at most `max_label_error_m`, and anchored (see
    `Coverage`) when a coverage test is given."""
    building = _building_of_floor(tracked)
    rng = np.random.default_rng(seed)
    fps = []
    for t in tracked:
        anchored = _anchored(t, coverage, cfg.anchor_s)
        for i, est, ok in zip(t.rows, t.track, anchored, strict=True):
            if not ok or est is None or not math.isfinite(est.error_m) or est.error_m > cfg.max_label_error_m:
                continue
            q = t.walk.queries[i]
            x, y = est.x, est.y
            if cfg.label_noise_m > 0:
                x, y = x + rng.normal(0, cfg.label_noise_m), y + rng.normal(0, cfg.label_noise_m)
            fps.append(
                replace(
                    q,
                    x=float(x),
                    y=float(y),
                    floor=est.floor,
                    building=building.get(est.floor),
                    path=f"session:{t.walk.key}",
                    extra={**(q.extra or {}), "pseudo": True, "sigma_m": round(est.error_m, 3)},
                )
            )
    return fps


def self_labels(model: LocModel, queries: Sequence[Fingerprint], cfg: UpdateConfig) -> list[Fingerprint]:
    """`single_query_labels: "self"`: the model's own answers with a small enough error estimate."""
    fps = [q for q in queries if q.wifi]
    if not fps:
        return []
    pred = _answers(model, fps)
    return [
        replace(q, x=float(p[0]), y=float(p[1]), floor=str(f), building=b, extra={**(q.extra or {}), "pseudo": True})
        for q, p, f, b, e in zip(fps, pred.xy, pred.floor, pred.building, pred.error_m, strict=True)
        if e <= cfg.self_label_max_error_m
    ]


def traffic_score(model: LocModel, guard: Sequence[Tracked], coverage: Coverage | None = None) -> dict[str, Any] | None:
    """How far `model`'s single-query answers to the guard walks' scans fall from their smoothed tracks
    (mean metres on the track's floor; floor agreement). `coverage`: only the scans like the survey's, where the
    tracks rest on good fixes. None without guard walks."""
    d, hit = [], []
    for t in guard:
        inside = (
            coverage.inside([t.walk.queries[i] for i in t.rows])
            if coverage is not None
            else np.ones(len(t.rows), dtype=bool)
        )
        keep = [(i, e) for i, e, ok in zip(t.rows, t.track, inside, strict=True) if e is not None and ok]
        if not keep:
            continue
        pred = _answers(model, [t.walk.queries[i] for i, _ in keep])
        for (_, e), p, f in zip(keep, pred.xy, pred.floor, strict=True):
            same = str(f) == e.floor
            hit.append(same)
            if same:
                d.append(float(math.hypot(p[0] - e.x, p[1] - e.y)))
    if not hit:
        return None
    return {
        "n": len(hit),
        "walks": len(guard),
        "mean_m": round(float(np.mean(d)), 3) if d else None,
        "floor_hit": round(float(np.mean(hit)), 4),
    }


def traffic_scores(
    active: LocModel,
    candidate: LocModel,
    guard: Sequence[Walk],
    plans: dict[str, Walkable] | None,
    cfg: UpdateConfig,
    coverage: Coverage | None = None,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The recent-traffic scores of the active model and the candidate (`traffic_score`) on the held-out walks,
    tracked (each point without its own fix) as `cfg.guard_reference` says: with both models' answers ("both"), the
    active model's ("active"), or each model's own ("own")."""
    if cfg.guard_reference == "both":
        shared = track(Pair(active, candidate), guard, plans, cfg, cross=True)
        return traffic_score(active, shared, coverage), traffic_score(candidate, shared, coverage)
    ref = track(active, guard, plans, cfg, cross=True)
    if cfg.guard_reference == "own":
        own = track(candidate, guard, plans, cfg, cross=True)
        return traffic_score(active, ref, coverage), traffic_score(candidate, own, coverage)
    return traffic_score(active, ref, coverage), traffic_score(candidate, ref, coverage)


def traffic_guard(
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    tolerance: float,
    floor_tolerance: float = 0.02,
    min_scans: int = 1,
) -> tuple[bool, str]:
    """Promote only if the candidate's answers to recent walks are not farther from their tracks than the active
    model's beyond the tolerance (mean distance at most (1 + tolerance) x, floor agreement down by at most
    `floor_tolerance`). Scores over fewer than `min_scans` held-out scans do not decide."""
    if before is None or after is None or before.get("mean_m") is None or after.get("mean_m") is None:
        return True, "no held-out recent walk scan like the survey's to judge on"
    if min(before["n"], after["n"]) < min_scans:
        return True, (
            f"recent traffic not judged: only {min(before['n'], after['n'])} held-out scans like the survey's "
            f"(guard_min_scans = {min_scans}; {after['mean_m']:.2f} m vs {before['mean_m']:.2f} m)"
        )
    if after["mean_m"] > before["mean_m"] * (1 + tolerance):
        return False, (
            f"rejected: on recent traffic ({before['walks']} held-out walks) the answers fall {after['mean_m']:.2f} m "
            f"from the walks' tracks vs the active version's {before['mean_m']:.2f} m, beyond the {tolerance:.0%} "
            "tolerance"
        )
    if after["floor_hit"] < before["floor_hit"] - floor_tolerance:
        return False, (
            f"rejected: on recent traffic the floor agrees with the walks' tracks {after['floor_hit']:.3f} vs the "
            f"active version's {before['floor_hit']:.3f}, beyond the tolerance"
        )
    return True, f"recent traffic {after['mean_m']:.2f} m vs {before['mean_m']:.2f} m from the held-out tracks"


def vanished_aps(survey: FingerprintSet, located: Sequence[Fingerprint], cfg: UpdateConfig) -> list[str]:
    """APs of the survey that recent traffic no longer hears where the survey heard them.

    `located`: recent queries with a position (the smoothed walks' pseudo-labels). For each, the survey rows of its
    floor within `churn_radius_m` say how often each AP should be heard there; an AP is gone when those
    expectations add up to at least `churn_min_expected` hearings and recent traffic heard it nowhere at all
    (comparing like with like: an AP heard only in a wing no recent walk went to is not "gone")."""
    if not cfg.churn or not located or len(survey) == 0:
        return []
    heard_anywhere = {r.bssid for q in located for r in q.wifi}
    index = {b: j for j, b in enumerate(survey.aps)}
    heard = ~np.isnan(survey.rss)
    floors = np.asarray([str(f) for f in survey.floor], dtype=object)
    expected = np.zeros(len(survey.aps))
    by_floor: dict[str, list[Fingerprint]] = defaultdict(list)
    for q in located:
        by_floor[str(q.floor)].append(q)
    for f, qs in by_floor.items():
        rows = np.flatnonzero(floors == f)
        if not len(rows):
            continue
        sxy, sh = survey.xy[rows], heard[rows].astype(np.float64)
        qxy = np.array([[q.x, q.y] for q in qs])
        for lo in range(0, len(qxy), 512):
            d2 = ((qxy[lo : lo + 512, None, :] - sxy[None, :, :]) ** 2).sum(axis=2)
            near = d2 <= cfg.churn_radius_m**2
            n = near.sum(axis=1, keepdims=True)
            rate = (near @ sh) / np.maximum(n, 1)  # (q, m): how often each AP is heard around each query
            expected += rate[n[:, 0] > 0].sum(axis=0)
    gone = [b for b, j in index.items() if expected[j] >= cfg.churn_min_expected and b not in heard_anywhere]
    return sorted(gone)


def drop_aps(fs: FingerprintSet, aps: Sequence[str]) -> FingerprintSet:
    """`fs` without the readings of `aps` (rows left with no reading are kept; models skip them)."""
    if not aps:
        return fs
    index = {b: i for i, b in enumerate(fs.aps)}
    cols = [index[b] for b in aps if b in index]
    rss = fs.rss.copy()
    rss[:, cols] = np.nan
    age = fs.age_ms.copy()
    age[:, cols] = np.nan
    return replace(fs, rss=rss, age_ms=age)


@dataclass
class Candidate:
    scored: LocModel  # fitted without the survey holdout: judged on it
    served: LocModel  # what is activated if the guard promotes: `scored` refitted on everything, or `scored`
    summary: dict[str, Any]


def build_candidate(
    model: LocModel,
    survey: list[Fingerprint],
    holdout: np.ndarray,
    pseudo: list[Fingerprint],
    unlabeled: list[Fingerprint],
    model_params: dict[str, Any],
    *,
    vanished: Sequence[str] = (),
    seed: int = 0,
    progress: ProgressFn = no_progress,
    device: str = "cpu",
) -> Candidate:
    """The candidate of one update: the survey rows (`holdout`: indices of the survey's holdout rows) plus the
    pseudo-labelled rows; `unlabeled` single queries go to models that co-train (itoloc)."""
    summary: dict[str, Any] = {"n_pseudo_labels": len(pseudo), "vanished_aps": list(vanished)}
    hold = np.unique(np.asarray(holdout, dtype=np.int64))
    if model.supports_cotrain:
        full = drop_aps(build_set([*survey, *pseudo], aps=model.aps), vanished)
        is_hold = np.zeros(len(full), dtype=bool)
        is_hold[hold] = True
        labeled = full.subset(np.flatnonzero(~is_hold))
        queries = build_set(list(unlabeled), aps=model.aps) if unlabeled else labeled.subset(np.arange(0))
        new, info = model.cotrain(labeled, queries, model_params, seed=seed, progress=progress, device=device)
        summary.update(info)
        return Candidate(new, new, summary)
    if model_params:
        raise InvalidParams(f"unknown update params for {model.name}: {sorted(model_params)}")
    settings = model.settings()
    if settings is None:
        raise InvalidParams(f"{model.name} models cannot be updated")
    rows = drop_aps(build_set([*survey, *pseudo]), vanished)
    if len(rows) == 0:
        raise InsufficientData("nothing to train the update on")
    scored = type(model).fit(rows, settings, holdout=hold, seed=seed, progress=_span(progress, 0.0, 0.6), device=device)
    served = scored
    if len(hold):
        again = scored.refit(rows, seed=seed, progress=_span(progress, 0.6, 1.0), device=device)
        if again is not None:
            served = again
    summary["retrained_on"] = {
        "survey": len(survey) - len(hold),
        "pseudo": len(pseudo),
        "refit_all": served is not scored,
    }
    return Candidate(scored, served, summary)


def learn(
    model: LocModel,
    walks: Sequence[Walk],
    singles: Sequence[Fingerprint],
    survey: list[Fingerprint],
    holdout: np.ndarray,
    plans: dict[str, Walkable] | None,
    cfg: UpdateConfig,
    model_params: dict[str, Any],
    *,
    seed: int = 0,
    progress: ProgressFn = no_progress,
    device: str = "cpu",
    coverage: Coverage | None = None,
) -> Candidate | None:
    """Steps 1 and 3-5 of the module docstring for the walks to learn from (the guard's are held out by the
    caller): `cfg.rounds` rounds of track -> pseudo-labels -> candidate, each round tracking the walks with the
    previous round's model. None when there is nothing to learn (no pseudo-label, no single query to co-train on,
    no vanished AP)."""
    labeler, cand = model, None
    unlabeled: list[Fingerprint] = []
    if cfg.single_query_labels == "auto" and model.supports_cotrain:
        unlabeled = [q for q in singles if q.wifi]
    per_round = []
    if coverage is None:
        coverage = Coverage.fit(survey, holdout, cfg)
    for r in range(cfg.rounds):
        span = _span(progress, r / cfg.rounds, (r + 1) / cfg.rounds)
        span(0.0, f"round {r + 1}: tracking {len(walks)} walks")
        tracked = track(labeler, walks, plans, cfg, coverage=coverage)
        pseudo = pseudo_labels(tracked, cfg, seed, coverage if cfg.anchor_s > 0 else None)
        if cfg.single_query_labels == "self":
            pseudo += self_labels(labeler, singles, cfg)
        vanished = vanished_aps(build_set(survey), pseudo, cfg)
        if not pseudo and not unlabeled and not vanished:
            break
        span(0.1, f"round {r + 1}: training on {len(survey)} survey rows and {len(pseudo)} pseudo-labels")
        cand = build_candidate(
            model,
            survey,
            holdout,
            pseudo,
            unlabeled,
            model_params,
            vanished=vanished,
            seed=seed,
            progress=_span(span, 0.1, 1.0),
            device=device,
        )
        per_round.append({"n_pseudo_labels": len(pseudo), "n_vanished_aps": len(vanished)})
        labeler = cand.served
    if cand is not None:
        cand.summary["update_rounds"] = per_round
    return cand
