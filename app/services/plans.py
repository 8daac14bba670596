"""Floor plans: stored per (site, floor) as GeoJSON in site metres; served to tracking as cached rasters."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import Database
from app.errors import Invalid, NotFound
from app.models import FloorPlan, Site
from app.models.tables import utcnow
from ml.data.limits import LABEL_MAX, text_problem
from ml.tracking.floorplan import PlanError, Walkable, plan_geometry, walkable_collection

log = logging.getLogger(__name__)


def put_plan(s: Session, *, site: Site, floor: str, plan: Any, source: str = "api") -> tuple[FloorPlan, Walkable]:
    """Store (replace) a floor's plan; the caller's transaction commits it. The plan is checked and rasterised
    here (the limits are ml/tracking/floorplan.py's), so its raster can go straight into `PlanCache.put`."""
    problem = text_problem(floor, LABEL_MAX)
    if problem is not None:
        raise Invalid(f"floor label: {problem}")
    if site.floors and floor not in [str(f) for f in site.floors]:
        raise Invalid(f"site {site.id!r} has floors {site.floors}; no floor {floor!r}")
    try:
        geom = plan_geometry(plan)
        walkable = Walkable(geom)
    except PlanError as e:
        raise Invalid(f"plan: {e}" if source == "api" else f"floor {floor!r}'s plan: {e}") from None
    row = s.get(FloorPlan, (site.id, floor))
    fc = plan if source == "api" else walkable_collection(geom)
    if row is None:
        row = FloorPlan(site_id=site.id, floor=floor, geojson=fc, source=source, updated_at=utcnow())
        s.add(row)
    else:
        row.geojson, row.source, row.updated_at = fc, source, utcnow()
    s.flush()
    return row, walkable


def get_plan(s: Session, *, site_id: str, floor: str) -> FloorPlan:
    row = s.get(FloorPlan, (site_id, floor))
    if row is None:
        raise NotFound(f"site {site_id!r} has no plan for floor {floor!r}")
    return row


def site_walkables(s: Session, *, site_id: str) -> dict[str, Walkable]:
    """Every floor plan of the site as rasters (for one job; `PlanCache` keeps them for the API). A stored plan
    that can no longer be built is left out, with a warning."""
    rows = s.scalars(select(FloorPlan).where(FloorPlan.site_id == site_id)).all()
    built = {r.floor: _walkable(r) for r in rows}
    return {floor: w for floor, w in built.items() if w is not None}


def plan_out(row: FloorPlan, area_m2: float | None = None) -> dict[str, Any]:
    """The API's view of a stored plan; `area_m2` when already known (else the geometry is rebuilt for it; None
    for a plan stored before the current limits that no longer passes them)."""
    if area_m2 is None:
        try:
            area_m2 = float(plan_geometry(row.geojson).area)
        except PlanError:
            area_m2 = None
    return {
        "site_id": row.site_id,
        "floor": row.floor,
        "source": row.source,
        "updated_at": row.updated_at,
        "area_m2": None if area_m2 is None else round(area_m2, 1),
        "plan": row.geojson,
    }


class PlanCache:
    """Per process: site -> {floor: Walkable}, re-checked against the database every `refresh_s` (a plan PUT
    through another process is used within that time); rasters are rebuilt only when changed.

    Reading the database and rasterising a changed plan never happen on the event loop: `/locate` asks `due` and
    then `refresh`es in a worker thread before the session hook reads the rasters (`__call__`), and a plan stored
    through this process is `put` in by its PUT (a worker thread too), already built. A stored plan that can no
    longer be built (stored before the current limits) is left out, with a warning, instead of failing queries."""

    def __init__(self, db: Database, refresh_s: float = 30.0) -> None:
        self._db = db
        self._refresh = refresh_s
        self._lock = threading.Lock()
        self._sites: dict[str, tuple[float, dict[str, tuple[datetime, Walkable | None]]]] = {}

    def __call__(self, site_id: str) -> dict[str, Walkable]:
        """The site's rasters (read now, blocking, only when `due`: callers on the event loop `refresh` first)."""
        entry = self._sites.get(site_id)
        if entry is None or entry[0] < time.monotonic():
            self.refresh(site_id)
            entry = self._sites[site_id]
        return {f: w for f, (_, w) in entry[1].items() if w is not None}

    def due(self, site_id: str) -> bool:
        """Whether the next `__call__` would read the database (never loaded, changed here, or `refresh_s` old)."""
        entry = self._sites.get(site_id)
        return entry is None or entry[0] < time.monotonic()

    def refresh(self, site_id: str) -> None:
        """Re-read the site's plans if due, rebuilding the changed ones (blocking: call it off the event loop)."""
        with self._lock:
            entry = self._sites.get(site_id)
            now = time.monotonic()
            if entry is None or entry[0] < now:
                self._sites[site_id] = (now + self._refresh, self._load(site_id, entry[1] if entry else {}))

    def put(self, site_id: str, floor: str, updated_at: datetime, walkable: Walkable) -> None:
        """A plan just committed through this process, with its raster: used at once, not built again."""
        with self._lock:
            entry = self._sites.get(site_id)
            floors = dict(entry[1]) if entry is not None else {}
            floors[floor] = (_utc(updated_at), walkable)
            # a site not loaded yet stays due: its other floors are read by the next refresh
            self._sites[site_id] = (entry[0] if entry is not None else 0.0, floors)

    def invalidate(self, site_id: str) -> None:
        with self._lock:
            entry = self._sites.get(site_id)
            if entry is not None:
                self._sites[site_id] = (0.0, entry[1])

    def _load(
        self, site_id: str, old: dict[str, tuple[datetime, Walkable | None]]
    ) -> dict[str, tuple[datetime, Walkable | None]]:
        with self._db.session() as s:
            stamps = s.execute(select(FloorPlan.floor, FloorPlan.updated_at).where(FloorPlan.site_id == site_id)).all()
            out: dict[str, tuple[datetime, Walkable | None]] = {}
            for floor, at in stamps:
                at = _utc(at)
                if floor in old and old[floor][0] == at:
                    out[floor] = old[floor]
                    continue
                row = s.get(FloorPlan, (site_id, floor))
                if row is not None:
                    out[floor] = (at, _walkable(row))
        return out


def _walkable(row: FloorPlan) -> Walkable | None:
    try:
        return Walkable.from_collection(row.geojson)
    except PlanError as e:
        log.warning("site %s floor %r: stored plan not used (%s); PUT a corrected one", row.site_id, row.floor, e)
        return None


def _utc(d: datetime) -> datetime:
    # SQLite hands back naive datetimes (stored in UTC), PostgreSQL aware ones, `utcnow()` aware ones.
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d
