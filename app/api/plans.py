"""Floor plans: the walkable area of a site's floor (GeoJSON in site metres), used by tracking sessions."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path

from app.deps import OperatorKey, RuntimeDep, SessionDep, SiteDep
from app.schemas.api import PLAN_RULES, PlanIn, PlanOut
from app.schemas.common import NoNul
from app.services import plans as svc
from ml.data.limits import LABEL_MAX

router = APIRouter(tags=["sites"])

# The floor label as everywhere else (survey fingerprints' `floor`, a site's `floors`): 1-64 characters, no NUL.
Floor = Annotated[str, Path(min_length=1, max_length=LABEL_MAX, description="The floor's label"), NoNul]


@router.put("/sites/{site_id}/floors/{floor}/plan", response_model=PlanOut)
def put_plan(
    floor: Floor,
    site: SiteDep,
    s: SessionDep,
    rt: RuntimeDep,
    plan: Annotated[PlanIn, Body(description=PLAN_RULES)],
) -> dict[str, Any]:
    """Set (replace) a floor's plan. It is checked and rasterised here, in a worker thread: tracking sessions in
    this API process use it at once, other API processes within 30 s (they re-read plans off the event loop)."""
    row, walkable = svc.put_plan(s, site=site, floor=floor, plan=plan.model_dump(exclude_unset=True))
    out = svc.plan_out(row, area_m2=walkable.area_m2)
    s.commit()  # stored before this process's sessions use it
    rt.plans.put(site.id, floor, out["updated_at"], walkable)
    return out


@router.get("/sites/{site_id}/floors/{floor}/plan", response_model=PlanOut)
def get_plan(floor: Floor, site: SiteDep, s: SessionDep, principal: OperatorKey) -> dict[str, Any]:
    """A floor's plan, as stored (an `ilc2020` survey import stores its archive's plan)."""
    return svc.plan_out(svc.get_plan(s, site_id=site.id, floor=floor))
