"""Floor plans: stored per (site, floor) as GeoJSON in site metres; served to tracking as cached rasters."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import Database
from app.errors import Invalid, NotFound
from app.models import FloorPlan, Site
from app.models.tables import utcnow
from ml.tracking.floorplan import PlanError, Walkable, plan_geometry, walkable_collection

MAX_PLAN_VERTICES = 200_000


def put_plan(s: Session, *, site: Site, floor: str, plan: Any, source: str = "api") -> FloorPlan:
    """Store (replace) a floor's plan; the caller's transaction commits it."""
    if site.floors and floor not in [str(f) for f in site.floors]:
        raise Invalid(f"site {site.id!r} has floors {site.floors}; no floor {floor!r}")
    try:
        geom = plan_geometry(plan)
    except PlanError as e:
        raise Invalid(f"plan: {e}") from None
    n = _vertices(plan)
    if n > MAX_PLAN_VERTICES:
        raise Invalid(f"plan: {n} vertices; the limit is {MAX_PLAN_VERTICES}")
    row = s.get(FloorPlan, (site.id, floor))
    fc = plan if source == "api" else walkable_collection(geom)
    if row is None:
        row = FloorPlan(site_id=site.id, floor=floor, geojson=fc, source=source, updated_at=utcnow())
        s.add(row)
    else:
        row.geojson, row.source, row.updated_at = fc, source, utcnow()
    s.flush()
    return row


def get_plan(s: Session, *, site_id: str, floor: str) -> FloorPlan:
    row = s.get(FloorPlan, (site_id, floor))
    if row is None:
        raise NotFound(f"site {site_id!r} has no plan for floor {floor!r}")
    return row


def site_walkables(s: Session, *, site_id: str) -> dict[str, Walkable]:
    """Every floor plan of the site as rasters (for one job; `PlanCache` keeps them for the API)."""
    rows = s.scalars(select(FloorPlan).where(FloorPlan.site_id == site_id)).all()
    return {r.floor: Walkable.from_collection(r.geojson) for r in rows}


def plan_out(row: FloorPlan) -> dict[str, Any]:
    return {
        "site_id": row.site_id,
        "floor": row.floor,
        "source": row.source,
        "updated_at": row.updated_at,
        "area_m2": round(float(plan_geometry(row.geojson).area), 1),
        "plan": row.geojson,
    }


def _vertices(obj: Any) -> int:
    if isinstance(obj, list):
        if obj and all(isinstance(v, int | float) for v in obj):
            return 1
        return sum(_vertices(v) for v in obj)
    if isinstance(obj, dict):
        return sum(_vertices(v) for v in obj.values())
    return 0


class PlanCache:
    """Per process: site -> {floor: Walkable}, re-checked against the database every `refresh_s`
    (a plan PUT through another process is used within that time); rasters are rebuilt only when changed."""

    def __init__(self, db: Database, refresh_s: float = 30.0) -> None:
        self._db = db
        self._refresh = refresh_s
        self._lock = threading.Lock()
        self._sites: dict[str, tuple[float, dict[str, tuple[datetime, Walkable]]]] = {}

    def __call__(self, site_id: str) -> dict[str, Walkable]:
        now = time.monotonic()
        entry = self._sites.get(site_id)
        if entry is None or entry[0] < now:
            with self._lock:
                entry = self._sites.get(site_id)
                if entry is None or entry[0] < now:
                    entry = (now + self._refresh, self._load(site_id, entry[1] if entry else {}))
                    self._sites[site_id] = entry
        return {f: w for f, (_, w) in entry[1].items()}

    def invalidate(self, site_id: str) -> None:
        with self._lock:
            entry = self._sites.get(site_id)
            if entry is not None:
                self._sites[site_id] = (0.0, entry[1])

    def _load(self, site_id: str, old: dict[str, tuple[datetime, Walkable]]) -> dict[str, tuple[datetime, Walkable]]:
        with self._db.session() as s:
            stamps = s.execute(select(FloorPlan.floor, FloorPlan.updated_at).where(FloorPlan.site_id == site_id)).all()
            out: dict[str, tuple[datetime, Walkable]] = {}
            for floor, at in stamps:
                if floor in old and old[floor][0] == at:
                    out[floor] = old[floor]
                    continue
                row = s.get(FloorPlan, (site_id, floor))
                if row is not None:
                    out[floor] = (at, Walkable.from_collection(row.geojson))
        return out
