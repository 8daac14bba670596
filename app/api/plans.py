"""Floor plans: the walkable area of a site's floor (GeoJSON in site metres), used by tracking sessions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body

from app.deps import OperatorKey, RuntimeDep, SessionDep, SiteDep
from app.schemas.api import PlanOut
from app.services import plans as svc

router = APIRouter(tags=["sites"])


@router.put("/sites/{site_id}/floors/{floor}/plan", response_model=PlanOut)
def put_plan(
    floor: str,
    site: SiteDep,
    s: SessionDep,
    rt: RuntimeDep,
    plan: dict[str, Any] = Body(  # noqa: B008 - FastAPI's way to take a raw JSON object
        ...,
        description="GeoJSON FeatureCollection of walkable Polygons/MultiPolygons in the site's metric frame "
        "(x, y as the survey's); their union is walkable",
    ),
) -> dict[str, Any]:
    """Set (replace) a floor's plan. Tracking sessions use it within seconds (every API process re-reads plans)."""
    row = svc.put_plan(s, site=site, floor=floor, plan=plan)
    out = svc.plan_out(row)
    rt.plans.invalidate(site.id)
    return out


@router.get("/sites/{site_id}/floors/{floor}/plan", response_model=PlanOut)
def get_plan(floor: str, site: SiteDep, s: SessionDep, principal: OperatorKey) -> dict[str, Any]:
    """A floor's plan, as stored (an `ilc2020` survey import stores its archive's plan)."""
    return svc.plan_out(svc.get_plan(s, site_id=site.id, floor=floor))
