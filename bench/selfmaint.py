"""Self-maintaining sites on ILC 2020 (issue 18): one update from later walks, through the public API.

    python -m bench.selfmaint                                   # every floor of both sites (docs/benchmarks/cotrain.md)
    python -m bench.selfmaint --sites site1 --floors F1         # one floor

Per floor, the paths are ordered by start time: the earliest 50% are the survey, the next 25% arrive later as
unlabeled tracking sessions, the last 25% are scored with single WiFi queries. Everything goes through a real
`siteloc serve` (embedded mode, a temporary data dir) with the Python client, as a new user would:

1. a site per variant: the survey uploaded (`POST /sites/{id}/surveys`: a JSONL file of its scans, or, for a model
   that trains on sensor windows (`mtloc`), its trace files as an `ilc2020` archive, windows every
   `--window-stride-ms`), the floor plan PUT from the archive's map, `POST /sites/{id}/finetune` with the model
   (default settings);
2. the middle quarter replayed as sessions through `POST /locate/batch`: one query per second from each path's
   first to last waypoint, with the last second of accelerometer, gyroscope, magnetometer and rotation vector
   (50 Hz), plus the newest scan when one arrived in that second (entry ages as of the query); `session_id` = the
   path, `timestamp` = the second;
3. one update: `POST /sites/{id}/cotrain`, the job's decision and its two guard scores read back;
4. the last quarter scored: every scan of those paths as a single `/locate` (no session) with the version to score
   activated (`POST .../models/{v}/activate`; the guard's choice is restored afterwards), against the waypoints
   interpolated at the scan's time.

Variants (each on its own site, so that each update sees only its own queries):
- `sessions`: the update as the scheduler would run it (default params);
- `single`: the middle quarter's scans sent as single queries (no session, no sensors), the update with
  `{"single_query_labels": "self"}` (the model's own confident answers as pseudo-labels), or for a model with its
  own test for single queries (`itoloc`'s co-training) with the default `"auto"`, which uses that test;
- `harmful`: the sessions again, the update with `{"label_noise_m": N}` (noise on every pseudo-label): the guard
  should reject it;
- `control`: survey only, same settings, no queries: the candidate `ml.selfupdate.build_candidate` makes from the
  survey and no pseudo-labels, in-process (the API refuses an update with nothing to learn from), from the same
  finetune pipeline and holdout as the service's;
- `oracle` (a ceiling, not a product result): the same candidate in-process with the middle quarter's scans labelled
  with their TRUE positions (waypoints interpolated) instead of pseudo-labels: how much better the radio map could
  get from these walks with perfect tracks.
- `labels` (a diagnosis, not a product result): the `sessions` update's steps in-process (`ml.selfupdate`: the
  same walks, split, coverage test, tracks and pseudo-labels, rebuilt from the traces rather than read back from
  the service, so its candidate is close to, not equal to, the API's), with each pseudo-label's error against the
  true position, and a second candidate from the same pseudo-labelled scans at their TRUE positions: the gap
  between `sessions` and it is what label error costs, the gap between it and `oracle` what the scans left
  unlabelled cost.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import numpy as np

from app.client import Client
from app.client import Invalid as ClientInvalid
from app.services.uploads import DEFAULT_WINDOW_STRIDE_MS
from bench.core import ilc_floor_names, ilc_run_start, ilc_session_parser
from bench.serve import Server
from bench.tracking import RATE_HZ, STEP_MS, read_floor, window
from ml.data.features import build_set
from ml.data.ilc2020 import IlcTrace, read_ilc_windows, trace_fingerprints
from ml.data.jsonl import read_jsonl
from ml.finetune import Finetuned, finetune, fit_model
from ml.models import get_model_class
from ml.models.base import LocModel, QueryBatch
from ml.selfupdate import (
    Coverage,
    UpdateConfig,
    Walk,
    build_candidate,
    pseudo_labels,
    split_walks,
    track,
    vanished_aps,
)
from ml.tracking.floorplan import Walkable
from ml.types import Fingerprint, SensorData, WifiReading

VARIANTS = ("sessions", "single", "harmful", "control", "oracle", "labels")


def time_thirds(traces: list[IlcTrace]) -> tuple[list[IlcTrace], list[IlcTrace], list[IlcTrace]]:
    """(survey, later sessions, scored): earliest 50%, next 25%, last 25% of the paths by start time."""
    ordered = sorted(traces, key=lambda tr: (tr.span[0], tr.trace_id))
    n = len(ordered)
    a, b = round(n * 0.5), round(n * 0.75)
    return ordered[:a], ordered[a:b], ordered[b:]


def _wifi_json(readings: list[WifiReading], extra_age: float = 0.0) -> list[dict[str, Any]]:
    out = []
    for r in readings:
        e: dict[str, Any] = {"bssid": r.bssid, "rssi": float(r.rssi)}
        if r.age_ms is not None or extra_age:
            e["age_ms"] = int((r.age_ms or 0) + extra_age)
        out.append(e)
    return out


def survey_rows(traces: list[IlcTrace]) -> list[dict[str, Any]]:
    return [
        {
            "wifi": _wifi_json(fp.wifi),
            "x": fp.x,
            "y": fp.y,
            "floor": fp.floor,
            "device": fp.device,
            "timestamp": fp.timestamp,
            "path": fp.path,
        }
        for tr in traces
        for fp in trace_fingerprints(tr)
    ]


def path_seconds(tr: IlcTrace, *, sensors: bool = True) -> Iterator[tuple[float, int | None, SensorData | None]]:
    """Each second of a path from its first waypoint (ms): the index of the scan that arrived in that second (None
    when none did) and the last second's motion (`window`; None when `sensors` is false or there is none)."""
    for t in np.arange(tr.span[0] + STEP_MS, tr.span[1] + 1, STEP_MS, dtype=np.float64).tolist():
        s = int(np.searchsorted(tr.scan_times, t, side="right")) - 1
        new = s >= 0 and tr.scan_times[s] > t - STEP_MS
        yield t, s if new else None, window(tr, t) if sensors else None


def session_queries(tr: IlcTrace, site_id: str, *, session: bool, prefix: str = "") -> list[dict[str, Any]]:
    """One query per second over the path (as the tracking benchmark): sensors + the newest new scan; the session id
    is `prefix` + the path id (the update's filter is seeded from it, so a run is repeatable).
    `session=False`: only the seconds with a new scan, as single queries (no session, no sensors)."""
    out: list[dict[str, Any]] = []
    for t, s, sensors in path_seconds(tr, sensors=session):
        new = s is not None
        q: dict[str, Any] = {"site_id": site_id, "device": tr.device or "phone"}
        if s is not None:
            q["wifi"] = _wifi_json(tr.scans[s], t - float(tr.scan_times[s]))
        if session:
            if not new and (sensors is None or not out):
                continue  # nothing to send, or motion before the session's first scan
            q.update(session_id=f"{prefix}{tr.trace_id}", timestamp=int(t))
            if sensors is not None:
                q["sensors"] = {
                    "rate_hz": RATE_HZ,
                    **{
                        k: np.round(getattr(sensors, k), 4).tolist()
                        for k in ("accel", "gyro", "mag", "rotation")
                        if getattr(sensors, k) is not None
                    },
                }
        elif not new:
            continue
        if "wifi" not in q and "sensors" not in q:
            continue
        out.append(q)
    return out


def scored_queries(traces: list[IlcTrace]) -> list[Fingerprint]:
    return [fp for tr in traces for fp in trace_fingerprints(tr)]


def score_api(client: Client, site_id: str, fps: list[Fingerprint], chunk: int = 500) -> dict[str, Any]:
    err, hit = [], []
    for i in range(0, len(fps), chunk):
        part = fps[i : i + chunk]
        out = client.locate_batch(
            [{"site_id": site_id, "wifi": _wifi_json(fp.wifi), "device": fp.device} for fp in part]
        )
        for fp, o in zip(part, out, strict=True):
            err.append(float(np.hypot(o.x - fp.x, o.y - fp.y)))
            hit.append(o.floor == fp.floor)
    return _stats(err, hit)


def _stats(err: list[float], hit: list[bool]) -> dict[str, Any]:
    a = np.asarray(err)
    return {
        "n": len(a),
        "mean_m": round(float(a.mean()), 3),
        "median_m": round(float(np.median(a)), 3),
        "p90_m": round(float(np.percentile(a, 90)), 3),
        "floor_hit": round(float(np.mean(hit)), 4),
        "_err": a.tolist(),
    }


def new_site(
    client: Client, name: str, survey: SurveyFile, plan: dict[str, Any], floor: str, model: str
) -> tuple[str, int]:
    site = client.create_site(name).id
    stride = survey.window_stride_ms if survey.fmt == "ilc2020" else None
    client.upload_survey_file(site, survey.path, fmt=survey.fmt, window_stride_ms=stride)
    client.put_plan(site, floor, plan)
    job = client.job_wait(client.finetune(site, {"model": model}), timeout=3600)
    if job.state != "succeeded":
        raise RuntimeError(f"finetune of {name} failed: {job.error or job.message}")
    return site, int(job.model_version or 0)


@dataclass(frozen=True)
class SurveyFile:
    """A floor's survey as uploaded: its scans as JSONL (a JSON body would pass the body-size limit), or, for a
    model that trains on sensor windows, its trace files as an ILC archive (the service cuts the windows)."""

    path: Path
    fmt: str
    window_stride_ms: int = DEFAULT_WINDOW_STRIDE_MS  # ilc2020 only

    @cached_property
    def rows(self) -> list[Fingerprint]:
        """What the service trains on from this file, read in-process once (the control, the oracle, `labels`)."""
        if self.fmt == "jsonl":
            return list(read_jsonl(self.path))
        return list(read_ilc_windows(self.path, stride_ms=self.window_stride_ms))


def survey_file(
    out_dir: Path, name: str, archive: Path, traces: list[IlcTrace], windows: bool, stride_ms: int
) -> SurveyFile:
    """`traces` of the floor `archive` written to `out_dir` as a survey upload (see `SurveyFile`)."""
    if not windows:
        path = out_dir / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in survey_rows(traces)))
        return SurveyFile(path, "jsonl")
    keep = {tr.name for tr in traces}
    path = out_dir / f"{name}.tar"
    with tarfile.open(archive, "r:*") as src, tarfile.open(path, "w") as dst:
        for m in src:
            f = src.extractfile(m) if m.isfile() and m.name in keep else None
            if f is not None:
                dst.addfile(m, f)
    return SurveyFile(path, "ilc2020", stride_ms)


def replay(
    client: Client, site: str, traces: list[IlcTrace], *, session: bool, prefix: str = "", chunk: int = 200
) -> dict[str, int]:
    """Send the queries; a batch refused with a 422 (a scan that hears none of the site's APs refuses the whole
    batch: nothing is stored) is sent again one by one, and a refused query goes again without its scan when it has
    a sensor window (what a phone does), else it is dropped. Returns counts."""
    n = {"sent": 0, "scan_dropped": 0, "dropped": 0}
    for tr in traces:
        qs = session_queries(tr, site, session=session, prefix=prefix)
        for i in range(0, len(qs), chunk):
            part = qs[i : i + chunk]
            try:
                client.locate_batch(part)
                n["sent"] += len(part)
                continue
            except ClientInvalid:
                pass
            for q in part:
                try:
                    client.locate(q)
                    n["sent"] += 1
                except ClientInvalid:
                    if "sensors" in q and "wifi" in q:
                        client.locate({k: v for k, v in q.items() if k != "wifi"})
                        n["sent"] += 1
                        n["scan_dropped"] += 1
                    else:
                        n["dropped"] += 1
    return n


def update(client: Client, site: str, params: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    job = client.job_wait(client.cotrain(site, params=params), timeout=3600)
    out: dict[str, Any] = {"job_state": job.state, "update_s": round(time.perf_counter() - t0, 1)}
    if job.state != "succeeded":
        out["error"] = job.error or job.message
        return out
    res = dict(job.result or {})
    out.update(
        status=res.get("status"),
        reason=res.get("reason"),
        version=job.model_version,
        **{
            k: res.get(k)
            for k in (
                "n_queries",
                "n_sessions_learned",
                "n_sessions_guard",
                "n_pseudo_labels",
                "n_vanished_aps",
                "session_minutes",
                "holdout_before",
                "holdout_after",
                "traffic_before",
                "traffic_after",
            )
        },
    )
    return out


def score_versions(client: Client, site: str, base: int, upd: dict[str, Any], fps: list[Fingerprint]) -> None:
    """Score the base version and the candidate (activating each), then restore what the guard chose."""
    upd["before"] = _score_version(client, site, base, fps)
    cand = upd.get("version")
    if cand:
        upd["after"] = _score_version(client, site, int(cand), fps)
        client.activate(site, int(cand) if upd.get("status") == "active" else base)
    else:  # no candidate (nothing to learn): the site keeps serving what it served
        upd["after"] = upd["before"]
    upd["served"] = upd.get("after") if upd.get("status") == "active" else upd["before"]


def _score_version(client: Client, site: str, version: int, fps: list[Fingerprint]) -> dict[str, Any]:
    client.activate(site, version)
    return score_api(client, site, fps)


def control(
    model: str, survey: SurveyFile, fps: list[Fingerprint], seed: int, labelled: SurveyFile | None = None
) -> dict[str, Any]:
    """Survey-only control in-process: the service's finetune pipeline (holdout 0.2, seed), then the update's
    candidate with no pseudo-labels (`labelled`: the oracle, those paths' rows with their true positions)."""
    rows = survey.rows
    truth = labelled.rows if labelled is not None else []
    done = _finetune(model, rows, seed)
    cand = build_candidate(done.model, rows, done.holdout.hold, truth, [], {}, seed=seed)
    return {"before": _score_model(done.model, fps), "after": _score_model(cand.served, fps)}


def _finetune(model: str, rows: list[Fingerprint], seed: int) -> Finetuned:
    """The service's finetune pipeline in-process (default settings, holdout 0.2, `seed`)."""
    return finetune(build_set(rows), fit_model(get_model_class(model), {}, seed=seed), holdout_fraction=0.2, seed=seed)


def _score_model(m: LocModel, fps: list[Fingerprint]) -> dict[str, Any]:
    """`fps` answered in-process by `m` (as `score_api` does through the API)."""
    q = build_set(fps, aps=m.aps)
    pred = m.predict(QueryBatch.from_set(q))
    err = np.hypot(*(pred.xy - q.xy).T).tolist()
    return _stats(err, [str(f) == fp.floor for f, fp in zip(pred.floor, fps, strict=True)])


def walk_queries(tr: IlcTrace, floor: str) -> list[Fingerprint]:
    """The queries `session_queries` sends for a path, as the update reads them back (wifi, sensors, timestamp),
    each carrying its true position in `extra["truth"]` (kept through `pseudo_labels`)."""
    out: list[Fingerprint] = []
    for t, s, sensors in path_seconds(tr):
        if s is None and (sensors is None or not out):
            continue
        x, y = (float(v[0]) for v in tr.position(np.array([t])))
        wifi = (
            [] if s is None else [replace(r, age_ms=int((r.age_ms or 0) + t - tr.scan_times[s])) for r in tr.scans[s]]
        )
        out.append(
            Fingerprint(wifi, x, y, floor, device=tr.device, timestamp=int(t), sensors=sensors, extra={"truth": (x, y)})
        )
    return out


def label_quality(
    model: str,
    survey: SurveyFile,
    later: list[IlcTrace],
    plan: dict[str, Any],
    floor: str,
    fps: list[Fingerprint],
    seed: int,
    params: dict[str, Any],
) -> dict[str, Any]:
    """The `labels` variant (module docstring)."""
    rows = survey.rows
    done = _finetune(model, rows, seed)
    hold = done.holdout.hold
    cfg, rest = UpdateConfig.split_params(params)
    learn, _ = split_walks([Walk(f"{floor}-sessions-{tr.trace_id}", walk_queries(tr, floor)) for tr in later], cfg)
    cov = Coverage.fit(rows, hold, cfg)
    tracked = track(done.model, learn, {floor: Walkable.from_collection(plan)}, cfg, coverage=cov)
    pseudo = pseudo_labels(tracked, cfg, seed, cov if cfg.anchor_s > 0 else None)
    truth = [cast(tuple[float, float], p.extra["truth"]) for p in pseudo]
    err = np.array([math.hypot(p.x - tx, p.y - ty) for p, (tx, ty) in zip(pseudo, truth, strict=True)])
    vanished = vanished_aps(build_set(rows), pseudo, cfg)
    out: dict[str, Any] = {
        "n_pseudo_labels": len(pseudo),
        "label_error_m": {
            "mean": round(float(err.mean()), 3),
            "median": round(float(np.median(err)), 3),
            "p90": round(float(np.quantile(err, 0.9)), 3),
        }
        if len(err)
        else None,
        "before": _score_model(done.model, fps),
    }
    for key, labels in (
        ("after", pseudo),
        ("true_positions", [replace(p, x=tx, y=ty) for p, (tx, ty) in zip(pseudo, truth, strict=True)]),
    ):
        cand = build_candidate(done.model, rows, hold, labels, [], rest, vanished=vanished, seed=seed)
        out[key] = _score_model(cand.served, fps)
    return out


def run_floor(
    client: Client,
    data_dir: Path,
    site: str,
    floor: str,
    args: argparse.Namespace,
    saved: Callable[[dict[str, Any]], None] = lambda res: None,
) -> dict[str, Any]:
    """Every variant of one floor; `saved(res)` after each, with what the floor has so far (a long run keeps what
    it measured if it is stopped)."""
    t0 = time.perf_counter()
    archive = data_dir / "ilc2020" / site / f"{floor}.tar.xz"
    traces, plan = read_floor(archive, floor)
    survey, later, scored = time_thirds(traces)
    cls = get_model_class(args.model)
    windows = cls.trains_on == "windows"
    fps = scored_queries(scored)
    with tempfile.TemporaryDirectory() as tmp:
        upload = survey_file(Path(tmp), "survey", archive, survey, windows, args.window_stride_ms)
        res: dict[str, Any] = {
            "paths": [len(survey), len(later), len(scored)],
            "survey_rows": len(upload.rows),
            "scored": len(fps),
        }
        for variant in args.variants:
            v0 = time.perf_counter()
            if variant == "labels":
                res[variant] = label_quality(args.model, upload, later, plan, floor, fps, args.seed, args.params)
            elif variant in ("control", "oracle"):
                truth = None
                if variant == "oracle":
                    truth = survey_file(Path(tmp), "oracle", archive, later, windows, args.window_stride_ms)
                res[variant] = control(args.model, upload, fps, args.seed, truth)
            else:
                sid, base = new_site(client, f"{site}-{floor}-{variant}", upload, plan, floor, args.model)
                n = replay(client, sid, later, session=variant != "single", prefix=f"{floor}-{variant}-")
                params = {
                    "sessions": {},
                    # a model with its own test for single queries (itoloc's co-training) uses it ("auto")
                    "single": {} if cls.supports_cotrain else {"single_query_labels": "self"},
                    "harmful": {"label_noise_m": args.harmful_noise_m},
                }[variant]
                params = {**params, **args.params}
                upd = update(client, sid, params)
                upd["params"], upd["replayed"] = params, n
                score_versions(client, sid, base, upd, fps)
                res[variant] = upd
            res[variant]["seconds"] = round(time.perf_counter() - v0, 1)
            print(f"{site}/{floor} {variant}: {_line(res[variant])}", file=sys.stderr, flush=True)
            saved(res)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def _line(r: dict[str, Any]) -> str:
    b, a = r.get("before", {}), r.get("after", {})
    ch = _change(b, a)
    return (
        f"before {b.get('mean_m')} m, after {a.get('mean_m')} m ({ch}), {r.get('status', '')} "
        f"{(r.get('reason') or '')[:160]}"
    )


def _change(b: dict[str, Any], a: dict[str, Any]) -> str:
    if not b.get("mean_m") or not a.get("mean_m"):
        return "-"
    return f"{(a['mean_m'] / b['mean_m'] - 1) * 100:+.1f}%"


def pooled(floors: dict[str, Any], variant: str, key: str) -> dict[str, Any] | None:
    err = [e for f in floors.values() if variant in f and key in f[variant] for e in f[variant][key]["_err"]]
    if not err:
        return None
    a = np.asarray(err)
    return {"n": len(a), "mean_m": round(float(a.mean()), 3)}


POOLED = (
    ("sessions", "before"),
    ("sessions", "after"),
    ("sessions", "served"),
    ("control", "after"),
    ("single", "after"),
    ("harmful", "after"),
    ("oracle", "after"),
    ("labels", "after"),
    ("labels", "true_positions"),
)


def site_pooled(floors: dict[str, Any]) -> dict[str, Any]:
    """Every variant's before/after pooled over a site's floors, with the change against that variant's before."""
    pool: dict[str, Any] = {}
    for variant, key in POOLED:
        x = pooled(floors, variant, key)
        ref = pooled(floors, variant, "before")
        if x and ref and key != "before":
            x["change"] = f"{(x['mean_m'] / ref['mean_m'] - 1) * 100:+.1f}%"
        pool[f"{variant}_{key}"] = x
    return pool


def strip(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k != "_err"}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def render(result: dict[str, Any]) -> str:
    """The table of docs/benchmarks/cotrain.md from a result's "sites" (`--render FILE`, `python -m bench.report`)."""
    lines = [
        "| site / floor | paths survey / sessions / scored | scored scans | before (m) | after: sessions | guard "
        "| served | survey-only control | single-query labels only | harmful (noisy labels) | harmful: guard "
        "| oracle labels (ceiling) | pseudo-labels | vanished APs | held-out walks' score before / after (m) "
        "| in-process: after / label error mean, median (m) | in-process: same scans at true positions |",
        "|---|---|--:|--:|--:|---|--:|--:|--:|--:|---|--:|--:|--:|---|---|--:|",
    ]

    def m(r: dict[str, Any] | None, key: str = "after") -> str:
        if not r or not r.get(key):
            return "-"
        return f"{r[key]['mean_m']:.2f} ({_change(r.get('before', {}), r[key])})"

    for site, v in result["sites"].items():
        for floor, r in v["floors"].items():
            s, h = r.get("sessions", {}), r.get("harmful", {})
            tb, ta = s.get("traffic_before") or {}, s.get("traffic_after") or {}
            lab = r.get("labels") or {}
            le = lab.get("label_error_m") or {}
            lab_cell = f"{m(lab)} / {le['mean']:.1f}, {le['median']:.1f}" if le else m(lab)
            lines.append(
                f"| {site} {floor} | {' / '.join(map(str, r['paths']))} | {r['scored']} "
                f"| {s.get('before', {}).get('mean_m', '-')} | {m(s)} | {s.get('status', '-')} | {m(s, 'served')} "
                f"| {m(r.get('control'))} | {m(r.get('single'))} | {m(h)} | {h.get('status', '-')} "
                f"| {m(r.get('oracle'))} | {s.get('n_pseudo_labels', '-')} | {s.get('n_vanished_aps', '-')} "
                f"| {tb.get('mean_m', '-')} / {ta.get('mean_m', '-')} | {lab_cell} | {m(lab, 'true_positions')} |"
            )
        p = v.get("pooled", {})
        cells = []
        for key in (
            "sessions_after",
            "sessions_served",
            "control_after",
            "single_after",
            "harmful_after",
            "oracle_after",
            "labels_after",
            "labels_true_positions",
        ):
            x = p.get(key)
            cells.append(f"{x['mean_m']:.2f} ({x['change']})" if x else "-")
        b = p.get("sessions_before") or {}
        lines.append(
            f"| **{site} pooled** | | {b.get('n', '-')} | {b.get('mean_m', '-')} | {cells[0]} | | {cells[1]} "
            f"| {cells[2]} | {cells[3]} | {cells[4]} | | {cells[5]} | | | | {cells[6]} | {cells[7]} |"
        )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ilc_session_parser("bench.selfmaint", __doc__)
    p.add_argument("--model", default="wknn")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--params", type=json.loads, default={}, help="extra update params for every API variant (JSON)")
    p.add_argument("--harmful-noise-m", type=float, default=40.0)
    p.add_argument(
        "--window-stride-ms",
        type=int,
        default=DEFAULT_WINDOW_STRIDE_MS,
        help="a sensor-window model's survey: one window every this many ms (the upload's window_stride_ms; default: "
        "the service's)",
    )
    args = p.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    bad = set(args.variants) - set(VARIANTS)
    if bad:
        p.error(f"unknown variants {sorted(bad)}; known: {VARIANTS}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.render is not None:
        print(render(json.loads(args.render.read_text())), end="")
        return 0
    data_dir, result = ilc_run_start("bench.selfmaint", argv, args.data_dir, __doc__)
    if data_dir is None:
        return 2
    t0 = time.perf_counter()
    result.update(model=args.model, sites={})
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / (f"selfmaint_{args.model}" + (f"_{args.tag}" if args.tag else "") + ".json")

    def write(partial: bool) -> None:
        result["partial"] = partial  # true while the run goes on (and if it was stopped): not every variant ran
        result["seconds"] = round(time.perf_counter() - t0, 1)
        out.write_text(json.dumps(strip(result), indent=2, default=float))

    server = Server(workers=1)
    try:
        with Client(server.base, server.admin_key, timeout=600) as client:
            for site in args.sites.split(","):
                fl: dict[str, Any] = {}
                result["sites"][site] = {"floors": fl}
                for f in ilc_floor_names(data_dir, site, args.floors):

                    def saved(res: dict[str, Any], f: str = f, fl: dict[str, Any] = fl) -> None:
                        fl[f] = res
                        write(True)

                    fl[f] = run_floor(client, data_dir, site, f, args, saved)
                pool = site_pooled(fl)
                result["sites"][site]["pooled"] = pool
                print(f"{site} pooled: {json.dumps(pool)}", file=sys.stderr, flush=True)
    finally:
        server.stop()
    write(False)
    print(f"wrote {out} in {result['seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
