"""Surveys: labelled fingerprints (and sensor windows) into the database, all or nothing; and read back as
training rows (finetune and co-training jobs).

Rows are inserted in chunks inside one transaction, so a large file streams
through with bounded memory and a failure anywhere keeps nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from app.errors import Invalid
from app.models import Site, SiteAP, Survey, SurveyFingerprint, Window
from app.schemas.api import SurveyOut
from app.services.codec import pack_sensors, unpack_sensors, wifi_from_db, wifi_to_db
from app.services.ids import new_id
from ml.data.limits import fingerprint_problem
from ml.models.base import LocModel
from ml.types import Fingerprint

CHUNK = 2000
SurveyBatch = tuple[list[Fingerprint], list[Fingerprint]]


class _Tally:
    def __init__(self, site: Site) -> None:
        self.floors = None if site.floors is None else set(site.floors)
        self.aps: Counter[str] = Counter()
        self.paths: set[str] = set()
        self.n = 0

    def check(self, fp: Fingerprint, where: str) -> None:
        # Readers name file and line for their own rows; this catches whatever else reaches the store.
        problem = fingerprint_problem(fp)
        if problem is not None:
            raise Invalid(f"{where}: field {problem[0]}: {problem[1]}")
        if self.floors is not None and fp.floor not in self.floors:
            raise Invalid(f"{where}: floor {fp.floor!r} is not one of this site's floors {sorted(self.floors)}")
        if fp.path is not None:
            self.paths.add(fp.path)


def _fp_row(fp: Fingerprint, site_id: str, survey_id: str) -> dict[str, Any]:
    return {
        "site_id": site_id,
        "survey_id": survey_id,
        "path": fp.path,
        "x": float(fp.x),
        "y": float(fp.y),
        "floor": fp.floor,
        "building": fp.building,
        "device": fp.device,
        "user": fp.user,
        "timestamp": fp.timestamp,
        "wifi": wifi_to_db(fp.wifi),
    }


def chunked(items: Iterable[Fingerprint], size: int = CHUNK) -> Iterator[SurveyBatch]:
    """Fingerprints as batches of `size`; one that carries a sensor window is also stored as a window."""
    buf: list[Fingerprint] = []
    for item in items:
        buf.append(item)
        if len(buf) >= size:
            yield buf, [fp for fp in buf if fp.sensors is not None]
            buf = []
    if buf:
        yield buf, [fp for fp in buf if fp.sensors is not None]


def ingest(
    s: Session,
    *,
    site: Site,
    batches: Iterable[SurveyBatch],
    fmt: str,
    filename: str | None = None,
) -> SurveyOut:
    """Store a survey from batches of (scan fingerprints, sensor windows).

    A window references the fingerprint of its WiFi scan when that scan is in the
    same batch (the same object, or the same path and scan time: readers emit one
    trace per batch), instead of copying it. The
    caller commits, or rolls back on any exception: nothing partial is kept.
    """
    survey = Survey(id=new_id(), site_id=site.id, format=fmt, filename=filename)
    s.add(survey)
    s.flush()
    tally = _Tally(site)
    n_windows = 0
    for fps, windows in batches:
        scan_ids = _insert_fingerprints(s, site, survey, fps, tally)
        n_windows += _insert_windows(s, site, survey, windows, tally, scan_ids, n_windows)
    if tally.n == 0 and n_windows == 0:
        raise Invalid("the survey holds no fingerprints")
    _grow_vocabulary(s, site.id, tally.aps)
    survey.n_fingerprints = tally.n
    survey.n_windows = n_windows
    survey.n_paths = len(tally.paths)
    s.flush()
    return SurveyOut(survey_id=survey.id, fingerprints=tally.n, windows=n_windows, paths=len(tally.paths))


ScanIds = dict[object, int]  # id(fingerprint object) or (path, scan time) -> fingerprint row id


def _insert_fingerprints(s: Session, site: Site, survey: Survey, fps: list[Fingerprint], tally: _Tally) -> ScanIds:
    if not fps:
        return {}
    rows = []
    for fp in fps:
        tally.check(fp, f"fingerprint {tally.n}")
        tally.aps.update({r.bssid for r in fp.wifi})
        rows.append(_fp_row(fp, site.id, survey.id))
        tally.n += 1
    ids = s.scalars(insert(SurveyFingerprint).returning(SurveyFingerprint.id, sort_by_parameter_order=True), rows)
    scan_ids: ScanIds = {}
    for fp, fid in zip(fps, ids, strict=True):
        scan_ids[id(fp)] = fid
        if fp.timestamp is not None:
            scan_ids[(fp.path, fp.timestamp)] = fid
    return scan_ids


def _insert_windows(
    s: Session,
    site: Site,
    survey: Survey,
    windows: list[Fingerprint],
    tally: _Tally,
    scan_ids: ScanIds,
    offset: int,
) -> int:
    rows = []
    for n, w in enumerate(windows, start=offset):
        tally.check(w, f"window {n}")
        if w.sensors is None:
            raise Invalid(f"window {n} has no sensor data")
        scan_time = w.extra.get("wifi_ts")
        fid = scan_ids.get(id(w))
        if fid is None and isinstance(scan_time, int):
            fid = scan_ids.get((w.path, scan_time))
        if fid is None:
            tally.aps.update({r.bssid for r in w.wifi})
        row = _fp_row(w, site.id, survey.id)
        row.pop("user")
        row["fingerprint_id"] = fid
        row["wifi"] = None if fid is not None else row["wifi"]
        row["sensors"] = pack_sensors(w.sensors)
        rows.append(row)
    if rows:
        s.execute(insert(Window), rows)
    return len(rows)


def _grow_vocabulary(s: Session, site_id: str, seen: Counter[str]) -> None:
    """Append new BSSIDs to the site's vocabulary (existing indices never change)."""
    if not seen:
        return
    s.execute(select(Site.id).where(Site.id == site_id).with_for_update())  # one vocabulary writer per site
    known = {b: n for b, n in s.execute(select(SiteAP.bssid, SiteAP.n_seen).where(SiteAP.site_id == site_id))}
    nxt = int(s.scalar(select(func.coalesce(func.max(SiteAP.idx) + 1, 0)).where(SiteAP.site_id == site_id)) or 0)
    new_rows = []
    for bssid, count in seen.items():
        if bssid in known:
            s.execute(
                update(SiteAP)
                .where(SiteAP.site_id == site_id, SiteAP.bssid == bssid)
                .values(n_seen=SiteAP.n_seen + count)
            )
        else:
            new_rows.append({"site_id": site_id, "bssid": bssid, "idx": nxt, "n_seen": count})
            nxt += 1
    if new_rows:
        s.execute(insert(SiteAP), new_rows)


def site_vocabulary(s: Session, *, site_id: str) -> list[str]:
    """The site's BSSIDs in vocabulary order (indices never change)."""
    return list(s.scalars(select(SiteAP.bssid).where(SiteAP.site_id == site_id).order_by(SiteAP.idx)))


# -- reading a survey back (the training jobs) -----------------------------------------------------


def load_site_fingerprints(s: Session, *, site_id: str) -> list[Fingerprint]:
    """The site's survey scans, in insertion order, each with its row id in `extra["id"]`."""
    rows = s.execute(
        select(
            SurveyFingerprint.wifi,
            SurveyFingerprint.x,
            SurveyFingerprint.y,
            SurveyFingerprint.floor,
            SurveyFingerprint.building,
            SurveyFingerprint.device,
            SurveyFingerprint.timestamp,
            SurveyFingerprint.path,
            SurveyFingerprint.user,
            SurveyFingerprint.id,
        )
        .where(SurveyFingerprint.site_id == site_id)
        .order_by(SurveyFingerprint.id)
        .execution_options(yield_per=5000)
    )
    return [
        Fingerprint(
            wifi=wifi_from_db(w), x=x, y=y, floor=f, building=b, device=d, timestamp=t, path=p, user=u, extra={"id": i}
        )
        for w, x, y, f, b, d, t, p, u, i in rows
    ]


def load_site_windows(s: Session, *, site_id: str) -> list[Fingerprint]:
    """The site's sensor windows, each with its WiFi scan (the referenced survey scan, or its own copy)."""
    scan = SurveyFingerprint.__table__.alias("scan")
    rows = s.execute(
        select(
            Window.wifi,
            scan.c.wifi,
            Window.sensors,
            Window.x,
            Window.y,
            Window.floor,
            Window.building,
            Window.device,
            Window.timestamp,
            Window.path,
            Window.id,
        )
        .outerjoin(scan, scan.c.id == Window.fingerprint_id)
        .where(Window.site_id == site_id)
        .order_by(Window.id)
        .execution_options(yield_per=5000)
    )
    return [
        Fingerprint(
            wifi=wifi_from_db(own if own is not None else ref),
            x=x,
            y=y,
            floor=f,
            building=b,
            device=d,
            timestamp=t,
            path=p,
            sensors=unpack_sensors(blob),
            extra={"id": i},
        )
        for own, ref, blob, x, y, f, b, d, t, p, i in rows
    ]


def load_training_rows(s: Session, *, site_id: str, cls: type[LocModel]) -> list[Fingerprint]:
    """What `cls` trains on: the site's survey scans, or its sensor windows."""
    if cls.trains_on == "windows":
        return load_site_windows(s, site_id=site_id)
    return load_site_fingerprints(s, site_id=site_id)
