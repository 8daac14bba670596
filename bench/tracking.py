"""Tracking sessions on ILC 2020: each test path replayed as a session, scored every second.

    python -m bench.tracking                      # every site and floor (docs/benchmarks/tracking.md)
    python -m bench.tracking --sites site1 --floors F1 --max-paths 5   # a quick development subset

Per floor, the floor's paths are split 75/25 by path (seed 0, as `siteloc bench ilc`); `wknn` is trained
(tuned) on the training paths exactly as a finetune does. Each test path is then replayed as one session: a
query every second from the first to the last waypoint, carrying the last second of accelerometer, gyroscope,
magnetometer and rotation vector (50 Hz) and, when a WiFi scan arrived in that second, the newest scan with
entry ages as of the query. Each query goes through the service's own session code (`app.services.sessions.
Tracker`, the same object `/locate` uses, fed with the model's answer exactly as the locate hook builds it).
Every second is scored against the waypoints interpolated at that time, beside the single-query answer a
phone without sessions shows then (the model's answer to its latest scan). After the path, the session's
smoothed track (GET /sessions/{id}) is scored too. Variants: with and without the floor plan. One more run per
site trains one model on all floors and replays every test path with all floors' plans (floor hit).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.services.sessions import MemoryStore, Tracker, fix_from_answer
from bench.core import ilc_floor_names, ilc_run_start, ilc_session_parser, train_model
from ml.data.features import build_set, scan_row
from ml.data.floorplans import ilc_plan_collection
from ml.data.ilc2020 import IlcTrace, parse_ilc_trace, trace_fingerprints
from ml.data.splits import split_by_group
from ml.models.base import LocModel, QueryBatch
from ml.tracking.filter import FilterConfig
from ml.tracking.floorplan import Walkable
from ml.tracking.motion import MotionState, displacement
from ml.tracking.replay import scan_key
from ml.tracking.smooth import smoothed_points
from ml.types import SensorData

RATE_HZ = 50.0
STEP_MS = 1000
_SENSORS = ("accel", "gyro", "mag", "rotation")


@dataclass
class Floor:
    site: str
    floor: str
    traces: list[IlcTrace]
    plan: Walkable
    test: list[IlcTrace] = field(default_factory=list)
    train_fps: list[Any] = field(default_factory=list)


def read_floor(path: Path, floor: str) -> tuple[list[IlcTrace], dict[str, Any]]:
    """An ILC floor archive: its traces (with sensors and rotation vector) and its walkable area (GeoJSON, metres)."""
    traces: list[IlcTrace] = []
    maps: dict[str, bytes] = {}
    with tarfile.open(path, "r:*") as tar:
        for m in tar:
            f = tar.extractfile(m) if m.isfile() else None
            if f is None:
                continue
            if m.name.endswith(".txt"):
                traces.append(parse_ilc_trace(f.read().decode(), m.name, sensors=True, rotation=True, floor_hint=floor))
            elif m.name.endswith(("geojson_map.json", "floor_info.json")):
                maps[m.name.rsplit("/", 1)[-1]] = f.read()
    return traces, ilc_plan_collection(maps["geojson_map.json"], maps["floor_info.json"], str(path))


def load_floor(path: Path, site: str, floor: str, seed: int, test_fraction: float) -> Floor:
    traces, collection = read_floor(path, floor)
    plan = Walkable.from_collection(collection)
    fl = Floor(site, floor, traces, plan)
    fps = [fp for tr in traces for fp in trace_fingerprints(tr)]
    # the same split as `siteloc bench ilc` (bench.core.path_split): whole paths, seeded
    train_idx, test_idx = split_by_group([fp.path for fp in fps], test_fraction, seed)
    test_paths = {fps[i].path for i in test_idx}
    fl.train_fps = [fps[i] for i in train_idx]
    fl.test = [tr for tr in traces if tr.trace_id in test_paths]
    return fl


def window(tr: IlcTrace, t: float) -> SensorData | None:
    grid = t - (np.arange(int(RATE_HZ))[::-1]) * (1000.0 / RATE_HZ)
    arrays: dict[str, np.ndarray | None] = {}
    for k in _SENSORS:
        s = tr.sensors.get(k)
        if s is None:
            arrays[k] = None
            continue
        i0, i1 = np.searchsorted(s[:, 0], [t - 1000.0, t], side="right")
        if i1 - i0 < 2:
            arrays[k] = None
            continue
        w = s[i0:i1]
        arrays[k] = np.stack([np.interp(grid, w[:, 0], w[:, c]) for c in (1, 2, 3)], axis=1).astype(np.float32)
    if all(a is None for a in arrays.values()):
        return None
    return SensorData(rate_hz=RATE_HZ, **arrays)


@dataclass
class Replay:
    """Per-second records of one path."""

    single: list[float] = field(default_factory=list)
    single_floor: list[bool] = field(default_factory=list)
    causal: dict[str, list[float]] = field(default_factory=dict)
    causal_floor: dict[str, list[bool]] = field(default_factory=dict)
    smoothed: dict[str, list[float]] = field(default_factory=dict)
    costs_ms: list[float] = field(default_factory=list)  # wall time of Tracker.update
    cpu_ms: list[float] = field(default_factory=list)  # its CPU time (this thread)
    pdr: list[tuple[float, float]] = field(default_factory=list)  # (|error vector|, |true displacement|)
    # per waypoint segment: (|PDR displacement - true displacement|, |true displacement|, seconds)
    segments: list[tuple[float, float, float]] = field(default_factory=list)
    blob_bytes: int = 0


def replay(tr: IlcTrace, model: LocModel, variants: dict[str, Tracker], floor: str) -> Replay:
    lo, hi = tr.span
    times = np.arange(lo + STEP_MS, hi + 1, STEP_MS, dtype=np.float64)
    truth = np.column_stack(tr.position(times))
    index = {b: i for i, b in enumerate(model.aps)}
    m = len(model.aps)
    # the newest scan that arrived in (t - 1 s, t], ages as of t
    si = np.searchsorted(tr.scan_times, times, side="right") - 1
    new = np.zeros(len(times), dtype=bool)
    rows, ages = [], []
    keys: list[str | None] = [None] * len(times)
    for k, (t, s) in enumerate(zip(times.tolist(), si.tolist(), strict=True)):
        if s >= 0 and tr.scan_times[s] > t - STEP_MS:
            new[k] = True
            extra = t - float(tr.scan_times[s])
            readings = [type(r)(r.bssid, r.rssi, int((r.age_ms or 0) + extra)) for r in tr.scans[s]]
            rss, age = scan_row(readings, index, m)
            rows.append(rss)
            ages.append(age)
            keys[k] = scan_key([(r.bssid, r.rssi) for r in tr.scans[s]])
    out = Replay()
    if not rows:
        return out
    pred = model.predict(QueryBatch(rss=np.stack(rows), age_ms=np.stack(ages)))
    pk = np.cumsum(new) - 1  # index into pred of the latest answered scan at each second
    nb = pred.neighbours
    ms = MotionState()
    pdr_xy = np.zeros((len(times), 2))  # the motion model's own track (stride scale 1, no heading bias) at each second
    started = False
    for name in variants:
        out.causal[name], out.causal_floor[name], out.smoothed[name] = [], [], []
    for k, t in enumerate(times.tolist()):
        sensors = window(tr, t)
        if k > 0:
            pdr_xy[k] = pdr_xy[k - 1]
        if sensors is not None and k > 0:
            d = displacement(sensors, ms)
            pdr_xy[k] += (d.dx, d.dy)
            true_d = truth[k] - truth[k - 1]
            out.pdr.append((float(np.hypot(d.dx - true_d[0], d.dy - true_d[1])), float(np.hypot(*true_d))))
        if pk[k] < 0:
            continue  # no scan yet: neither a phone alone nor a session has an answer
        j = int(pk[k])
        out.single.append(float(np.hypot(*(pred.xy[j] - truth[k]))))
        out.single_floor.append(str(pred.floor[j]) == floor)
        fix = None
        if new[k]:
            fix = fix_from_answer(
                pred.xy[j, 0],
                pred.xy[j, 1],
                pred.floor[j],
                pred.error_m[j],
                None if nb is None else (nb[0][j], nb[1][j]),
            )
        for name, trk in variants.items():
            if not started and fix is None:
                continue
            f = (
                None
                if fix is None
                else fix_from_answer(fix.x, fix.y, fix.floor, fix.error_m, None if nb is None else (nb[0][j], nb[1][j]))
            )
            t0, c0 = time.perf_counter(), time.thread_time()
            est = trk.update(
                owner="bench",
                session_id=tr.trace_id,
                site_id="s",
                t_ms=int(t),
                sensors=sensors,
                fix=f,
                scan=keys[k] if new[k] else None,
            )
            out.costs_ms.append((time.perf_counter() - t0) * 1000.0)
            out.cpu_ms.append((time.thread_time() - c0) * 1000.0)
            out.causal[name].append(float(np.hypot(est.x - truth[k, 0], est.y - truth[k, 1])))
            out.causal_floor[name].append(est.floor == floor)
        started = True
    out.segments = segment_errors(tr, times, pdr_xy)
    for name, trk in variants.items():
        st = trk.store.get(trk.key("bench", tr.trace_id))
        if st is None:
            continue
        from app.services.sessions import Session

        sess = Session.from_bytes(st)
        out.blob_bytes = max(out.blob_bytes, len(st))
        if sess.state is None:
            continue
        sm = smoothed_points(sess.state)
        tt = np.array([p.t_ms for p in sm], dtype=np.float64)
        txy = np.column_stack(tr.position(tt))
        out.smoothed[name] = [float(np.hypot(p.x - a, p.y - b)) for p, (a, b) in zip(sm, txy, strict=True)]
    return out


def segment_errors(tr: IlcTrace, times: np.ndarray, pdr_xy: np.ndarray) -> list[tuple[float, float, float]]:
    """The motion model's displacement over each waypoint segment against the waypoints' own.

    The PDR track (one point a second) is interpolated at the two waypoints' times; segments are clipped to the
    replayed seconds (the first second has no window before it)."""
    if len(times) < 2:
        return []
    out = []
    for (ta, _, _), (tb, _, _) in zip(tr.waypoints[:-1], tr.waypoints[1:], strict=True):
        a, b = max(float(ta), float(times[0])), min(float(tb), float(times[-1]))
        if b - a < STEP_MS:
            continue
        ends = np.array([a, b])
        px, py = np.interp(ends, times, pdr_xy[:, 0]), np.interp(ends, times, pdr_xy[:, 1])
        wx, wy = tr.position(ends)
        err = np.hypot((px[1] - px[0]) - (wx[1] - wx[0]), (py[1] - py[0]) - (wy[1] - wy[0]))
        out.append((float(err), float(np.hypot(wx[1] - wx[0], wy[1] - wy[0])), (b - a) / 1000.0))
    return out


def stats(e: list[float]) -> dict[str, float | int]:
    a = np.asarray(e, dtype=np.float64)
    if not len(a):
        return {"n": 0}
    return {
        "n": len(a),
        "mean_m": round(float(a.mean()), 3),
        "median_m": round(float(np.median(a)), 3),
        "p90_m": round(float(np.percentile(a, 90)), 3),
    }


def _rate(hits: list[bool]) -> float:
    return round(float(np.mean(hits)), 4) if hits else float("nan")


def summarise(reps: list[Replay], variants: list[str]) -> dict[str, Any]:
    single = [e for r in reps for e in r.single]
    out: dict[str, Any] = {"paths": len(reps), "single": stats(single)}
    out["single"]["floor_hit"] = _rate([f for r in reps for f in r.single_floor])
    base = out["single"].get("mean_m")
    for v in variants:
        c = stats([e for r in reps for e in r.causal.get(v, [])])
        c["floor_hit"] = _rate([f for r in reps for f in r.causal_floor.get(v, [])])
        s = stats([e for r in reps for e in r.smoothed.get(v, [])])
        if base:
            c["ratio_to_single"] = round(c.get("mean_m", np.nan) / base, 3)
            s["ratio_to_single"] = round(s.get("mean_m", np.nan) / base, 3)
        out[f"causal_{v}"] = c
        out[f"smoothed_{v}"] = s
    pdr = np.array([p for r in reps for p in r.pdr]).reshape(-1, 2)
    if len(pdr):
        out["pdr_1s"] = {
            "n": len(pdr),
            "mean_error_m": round(float(pdr[:, 0].mean()), 3),
            "median_error_m": round(float(np.median(pdr[:, 0])), 3),
            "mean_true_displacement_m": round(float(pdr[:, 1].mean()), 3),
        }
    seg = np.array([g for r in reps for g in r.segments]).reshape(-1, 3)
    if len(seg):
        out["pdr_segment"] = {
            "n": len(seg),
            "mean_error_m": round(float(seg[:, 0].mean()), 3),
            "median_error_m": round(float(np.median(seg[:, 0])), 3),
            "p90_error_m": round(float(np.percentile(seg[:, 0], 90)), 3),
            "mean_length_m": round(float(seg[:, 1].mean()), 3),
            "mean_seconds": round(float(seg[:, 2].mean()), 2),
            # error per metre walked, pooled: sum of errors / sum of lengths
            "error_per_m": round(float(seg[:, 0].sum() / max(seg[:, 1].sum(), 1e-9)), 3),
        }
    costs = np.array([c for r in reps for c in r.costs_ms])
    cpu = np.array([c for r in reps for c in r.cpu_ms])
    if len(costs):
        out["session_query_ms"] = {
            "n": len(costs),
            "wall_p50": round(float(np.percentile(costs, 50)), 3),
            "wall_p99": round(float(np.percentile(costs, 99)), 3),
            "cpu_p50": round(float(np.percentile(cpu, 50)), 3),
            "cpu_p99": round(float(np.percentile(cpu, 99)), 3),
        }
    out["session_state_bytes_max"] = max((r.blob_bytes for r in reps), default=0)
    return out


def make_variants(plans: dict[str, Walkable], cfg: FilterConfig, ttl: float = 3600.0) -> dict[str, Tracker]:
    return {
        "plan": Tracker(MemoryStore(ttl), lambda _site: plans, cfg),
        "noplan": Tracker(MemoryStore(ttl), None, cfg),
    }


def run_site(data_dir: Path, site: str, floors: list[str], args: argparse.Namespace) -> dict[str, Any]:
    cfg = FilterConfig(particles=args.particles)
    res: dict[str, Any] = {"floors": {}}
    loaded = []
    for floor in floors:
        t0 = time.perf_counter()
        fl = load_floor(data_dir / "ilc2020" / site / f"{floor}.tar.xz", site, floor, args.seed, args.test_fraction)
        if args.max_paths:
            fl.test = fl.test[: args.max_paths]
        loaded.append(fl)
        model, fit_s = train_model("wknn", build_set(fl.train_fps), {}, args.seed, False)
        reps = [replay(tr, model, make_variants({floor: fl.plan}, cfg), floor) for tr in fl.test]
        r = summarise(reps, ["plan", "noplan"])
        r["fit_s"] = round(fit_s, 1)
        r["seconds"] = round(time.perf_counter() - t0, 1)
        res["floors"][floor] = r
        res["floors"][floor]["_reps"] = reps
        print(f"{site}/{floor}: {_line(r)}", file=sys.stderr, flush=True)
    all_reps = [rep for f in res["floors"].values() for rep in f.pop("_reps")]
    res["pooled"] = summarise(all_reps, ["plan", "noplan"])
    print(f"{site} pooled: {_line(res['pooled'])}", file=sys.stderr, flush=True)
    if not args.no_allfloors and len(loaded) > 1:
        t0 = time.perf_counter()
        model, _ = train_model("wknn", build_set([fp for fl in loaded for fp in fl.train_fps]), {}, args.seed, False)
        plans = {fl.floor: fl.plan for fl in loaded}
        reps = [replay(tr, model, make_variants(plans, cfg), fl.floor) for fl in loaded for tr in fl.test]
        res["allfloors"] = summarise(reps, ["plan", "noplan"])
        res["allfloors"]["seconds"] = round(time.perf_counter() - t0, 1)
        print(f"{site} all floors: {_line(res['allfloors'])}", file=sys.stderr, flush=True)
    return res


def _line(r: dict[str, Any]) -> str:
    s = r["single"]
    c, cn, sm = r.get("causal_plan", {}), r.get("causal_noplan", {}), r.get("smoothed_plan", {})
    return (
        f"single {s.get('mean_m')} m (floor {s.get('floor_hit')}), causal+plan {c.get('mean_m')} "
        f"({c.get('ratio_to_single')}x, floor {c.get('floor_hit')}), causal {cn.get('mean_m')} "
        f"({cn.get('ratio_to_single')}x), smoothed+plan {sm.get('mean_m')} ({sm.get('ratio_to_single')}x)"
    )


def render(result: dict[str, Any]) -> str:
    """The tables of docs/benchmarks/tracking.md from a result JSON (`--render FILE`)."""
    lines = [
        "| site / floor | paths | s | single-query wknn mean / median / P90 | causal + plan | causal, no plan "
        "| smoothed + plan | smoothed, no plan | causal / single | smoothed / single |",
        "|---|--:|--:|---|---|---|---|---|--:|--:|",
    ]

    def cell(x: dict[str, Any]) -> str:
        return f"{x.get('mean_m', '-')} / {x.get('median_m', '-')} / {x.get('p90_m', '-')}"

    def row(name: str, r: dict[str, Any]) -> str:
        return (
            f"| {name} | {r['paths']} | {r['single']['n']} | {cell(r['single'])} | {cell(r['causal_plan'])} "
            f"| {cell(r['causal_noplan'])} | {cell(r['smoothed_plan'])} | {cell(r['smoothed_noplan'])} "
            f"| {r['causal_plan'].get('ratio_to_single')} | {r['smoothed_plan'].get('ratio_to_single')} |"
        )

    for site, v in result["sites"].items():
        for floor, r in v["floors"].items():
            lines.append(row(f"{site} {floor}", r))
        lines.append(row(f"**{site} pooled**", v["pooled"]))
    lines += [
        "",
        "| all-floors site | paths | single mean m | single floor hit | causal + plan mean m | causal + plan floor hit "
        "| causal, no plan floor hit | smoothed + plan mean m |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for site, v in result["sites"].items():
        a = v.get("allfloors")
        if a:
            lines.append(
                f"| {site} | {a['paths']} | {a['single']['mean_m']} | {a['single']['floor_hit']} "
                f"| {a['causal_plan']['mean_m']} | {a['causal_plan']['floor_hit']} "
                f"| {a['causal_noplan']['floor_hit']} | {a['smoothed_plan']['mean_m']} |"
            )
    lines += [
        "",
        "| site / floor | PDR 1 s windows | mean displacement error m | median m | mean true displacement m "
        "| waypoint segments | segment error mean / median / P90 m | mean segment length m / s | error per m walked "
        "| session query CPU p50 / p99 ms | wall p50 / p99 ms | largest session state, bytes |",
        "|---|--:|--:|--:|--:|--:|---|---|--:|---|---|--:|",
    ]
    for site, v in result["sites"].items():
        for floor, r in [*v["floors"].items(), ("pooled", v["pooled"])]:
            p, c, g = r.get("pdr_1s", {}), r.get("session_query_ms", {}), r.get("pdr_segment", {})
            lines.append(
                f"| {site} {floor} | {p.get('n')} | {p.get('mean_error_m')} | {p.get('median_error_m')} "
                f"| {p.get('mean_true_displacement_m')} | {g.get('n', '-')} "
                f"| {g.get('mean_error_m', '-')} / {g.get('median_error_m', '-')} / {g.get('p90_error_m', '-')} "
                f"| {g.get('mean_length_m', '-')} / {g.get('mean_seconds', '-')} | {g.get('error_per_m', '-')} "
                f"| {c.get('cpu_p50')} / {c.get('cpu_p99')} "
                f"| {c.get('wall_p50')} / {c.get('wall_p99')} | {r.get('session_state_bytes_max')} |"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ilc_session_parser("bench.tracking", __doc__)
    p.add_argument("--max-paths", type=int, default=0, help="development subset: at most this many test paths a floor")
    p.add_argument("--no-allfloors", action="store_true", help="skip the all-floors run per site")
    p.add_argument("--particles", type=int, default=FilterConfig().particles)
    p.add_argument("--test-fraction", type=float, default=0.25)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.render is not None:
        print(render(json.loads(args.render.read_text())), end="")
        return 0
    data_dir, result = ilc_run_start("bench.tracking", argv, args.data_dir, __doc__)
    if data_dir is None:
        return 2
    t0 = time.perf_counter()
    result.update(
        filter=json.loads(json.dumps(FilterConfig(particles=args.particles), default=lambda o: o.__dict__)), sites={}
    )
    for site in args.sites.split(","):
        result["sites"][site] = run_site(data_dir, site, ilc_floor_names(data_dir, site, args.floors), args)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result["max_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "tracking" + (f"_{args.tag}" if args.tag else "")
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {args.out / (name + '.json')} in {result['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
