"""Training jobs: finetune and co-training run in the background; poll GET /jobs/{id}."""

from __future__ import annotations

from fastapi import APIRouter, status

from app.deps import OperatorKey, RuntimeDep, SessionDep, SiteDep
from app.schemas.api import CotrainIn, FinetuneIn, JobOut, JobRef
from app.services import jobs as jobs_svc
from app.services.cotrain import request_cotrain
from app.services.training import request_finetune

router = APIRouter(tags=["jobs"])


@router.post("/sites/{site_id}/finetune", status_code=status.HTTP_202_ACCEPTED, response_model=JobRef)
def finetune(site: SiteDep, body: FinetuneIn, s: SessionDep, rt: RuntimeDep, principal: OperatorKey) -> JobRef:
    """Train a model for the site from its survey, in the background. Poll the returned job.

    The new version is a `candidate`; the first version of a site becomes `active` at once.

    One pipeline: `SITELOC_HOLDOUT_FRACTION` (or `params.holdout_fraction`) of the survey's paths per floor is held
    out; the model trained on the rest is scored on it, and those are the version's `metrics`. `wknn`, `dnn`,
    `cnnloc` and transfer fits are then refitted once on the whole survey with the settings chosen on the holdout
    and served; `itoloc` and `mtloc` are served as scored. The job's `result` has `fits` and `refit_with_holdout`.
    """
    job = request_finetune(s, site=site, body=body, principal=principal)
    return JobRef(job_id=jobs_svc.commit_and_enqueue(s, job=job, enqueue=rt.dispatcher.enqueue))


@router.post("/sites/{site_id}/cotrain", status_code=status.HTTP_202_ACCEPTED, response_model=JobRef)
def cotrain(site: SiteDep, s: SessionDep, rt: RuntimeDep, body: CotrainIn | None = None) -> JobRef:
    """One self-maintenance update of the site's active model (any model) from its stored, not yet used /locate
    queries: tracking-session walks become pseudo-labels (smoothed positions); `itoloc` also co-trains on single
    queries. The newest walks are held out to judge the update.

    The result is a new version: `active` if it is worse neither on the survey holdout nor on the held-out recent
    walks than the current one (beyond SITELOC_COTRAIN_TOLERANCE), else `rejected` with the reason (see GET
    /sites/{id}/models). 409 when there is nothing to learn from (no unused queries; for models other than
    `itoloc`, no unused session queries) or an update of the site is already queued or running (one at a time, also
    under concurrent requests: the database keeps one). A walk is one key's tracking session: two apps that use the
    same `session_id` are two walks. `params` are checked before the job is queued (422 naming the bad one); an
    integral number for an integer setting (500.0) is taken as that integer.
    """
    body = body or CotrainIn()
    job = request_cotrain(s, site=site, params=body.model_dump(mode="json"))
    return JobRef(job_id=jobs_svc.commit_and_enqueue(s, job=job, enqueue=rt.dispatcher.enqueue))


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: str, s: SessionDep, principal: OperatorKey) -> JobOut:
    job = jobs_svc.get_job(s, job_id=job_id)
    if job.site_id is not None:
        principal.require_site(job.site_id)
    return jobs_svc.job_out(job)
