"""Read-only listings (operator, or admin for keys): what the console shows, open to any client."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.api.models import version_out
from app.deps import AdminKey, OperatorKey, SessionDep, SiteDep
from app.schemas.browse import JobsOut, KeysOut, ModelVersionDetail, QueriesOut, SurveyPointsOut, as_cdf
from app.services import browse as svc
from app.services import jobs as jobs_svc

router = APIRouter()


@router.get("/sites/{site_id}/survey/points", response_model=SurveyPointsOut, tags=["sites"])
def survey_points(
    site: SiteDep,
    s: SessionDep,
    floor: Annotated[str | None, Query(max_length=64, description="Only this floor")] = None,
    limit: Annotated[int, Query(ge=1, le=20000)] = 5000,
) -> SurveyPointsOut:
    """Survey positions (x, y, floor, path) in the site's frame, with their bounding box. Role: operator
    (sites on its key) or admin."""
    return svc.survey_points(s, site_id=site.id, floor=floor, limit=limit)


@router.get("/sites/{site_id}/queries", response_model=QueriesOut, tags=["sites"])
def recent_queries(site: SiteDep, s: SessionDep, limit: Annotated[int, Query(ge=1, le=5000)] = 500) -> QueriesOut:
    """The site's newest /locate answers (position, floor, `error_m`, model version), newest first. Role:
    operator (sites on its key) or admin."""
    return svc.recent_queries(s, site_id=site.id, limit=limit)


@router.get("/sites/{site_id}/models/{version}", response_model=ModelVersionDetail, tags=["models"])
def get_model(site: SiteDep, version: Annotated[int, Path(ge=1, le=2**31 - 1)], s: SessionDep) -> ModelVersionDetail:
    """One model version: what `GET /sites/{id}/models` lists, plus the points of its holdout error CDF and the
    job that made it. Role: operator (sites on its key) or admin."""
    mv = svc.get_version(s, site_id=site.id, version=version)
    cdf, source = as_cdf(mv.metrics or {})
    return ModelVersionDetail(**version_out(mv).model_dump(), cdf=cdf, cdf_source=source, job_id=mv.job_id)


@router.get("/jobs", response_model=JobsOut, tags=["jobs"])
def list_jobs(
    s: SessionDep,
    principal: OperatorKey,
    site_id: Annotated[str | None, Query(max_length=32, description="Only this site's jobs")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> JobsOut:
    """The newest jobs (finetune, co-training) the key may see, newest first. Role: operator (jobs of the sites
    on its key) or admin."""
    jobs = svc.list_jobs(s, principal=principal, site_id=site_id, limit=limit)
    return JobsOut(jobs=[jobs_svc.job_out(j) for j in jobs])


@router.get("/keys", response_model=KeysOut, tags=["keys"])
def list_keys(
    s: SessionDep,
    _admin: AdminKey,
    include_revoked: Annotated[bool, Query(description="Also list revoked keys")] = False,
) -> KeysOut:
    """API keys (never their plaintext or hash; `prefix` identifies one). Role: admin."""
    return KeysOut(keys=svc.list_keys(s, include_revoked=include_revoked))
