"""Co-training updates: a site's stored /locate queries -> a candidate model version, promoted only if it is
not worse on the survey holdout than the active version.

The survey (labeled) and the queries (unlabeled) never mix: queries carry no
labels and are marked with the job that consumed them, so each is used once.
One update per site at a time: a lease on the site row, renewed while the job
runs, which a crashed worker's job stops renewing (so it expires and frees the site).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import Database
from app.errors import Conflict, Invalid, JobFailed, NotAvailable
from app.models import Job, ModelVersion, Query, Site
from app.services.codec import wifi_from_db
from app.services.jobs import JobContext, ProgressReporter, create_job, finish_job
from app.services.registry import activate, publish_version
from app.services.surveys import load_site_fingerprints
from ml.cotrain import CotrainConfig, holdout_guard
from ml.data.features import build_set
from ml.finetune import evaluate
from ml.models import MODEL_NAMES, get_model_class
from ml.serialize import dumps, loads
from ml.types import Fingerprint

log = logging.getLogger(__name__)


def _active_version(s: Session, site_id: str) -> ModelVersion | None:
    return s.scalar(select(ModelVersion).where(ModelVersion.site_id == site_id, ModelVersion.status == "active"))


def unused_queries(s: Session, *, site_id: str) -> int:
    """How many of the site's stored queries no update has used yet."""
    return int(
        s.scalar(select(func.count()).select_from(Query).where(Query.site_id == site_id, Query.used_by_job.is_(None)))
        or 0
    )


def _pending_job(s: Session, site_id: str) -> str | None:
    return s.scalar(
        select(Job.id).where(Job.site_id == site_id, Job.kind == "cotrain", Job.state.in_(("queued", "running")))
    )


def request_cotrain(s: Session, *, site: Site, params: dict[str, Any]) -> Job:
    """Validate and create a co-training job (the caller commits, then dispatches)."""
    active = _active_version(s, site.id)
    if active is None:
        raise Conflict(f"site {site.id!r} has no active model to update; finetune one first")
    if not get_model_class(active.model).supports_cotrain:
        raise NotAvailable(
            f"co-training updates itoloc models; site {site.id!r}'s active model is {active.model} "
            f"v{active.version}. Finetune and activate an itoloc model first"
        )
    try:
        CotrainConfig.from_params(dict(params.get("params") or {}))
    except (ValueError, TypeError) as exc:
        # User params checked before any job exists: ml.errors.InvalidParams is a ValueError (ml.cotrain still
        # raises plain ones), and a value of the wrong type ({"sigma": "x"}) fails its comparison with TypeError.
        raise Invalid(f"params: {exc}") from None
    if unused_queries(s, site_id=site.id) == 0:
        raise Conflict(f"site {site.id!r} has no stored queries not yet used by an update; nothing to learn from")
    pending = _pending_job(s, site.id)
    if pending is not None:
        raise Conflict(f"an update of site {site.id!r} is already queued or running (job {pending})")
    return create_job(s, kind="cotrain", site_id=site.id, params=params)


def schedule_due_updates(s: Session, *, settings: Settings) -> list[str]:
    """Jobs for every site whose active model co-trains and has >= cotrain_min_new_queries unused queries.

    The caller commits, then enqueues the returned job ids."""
    created = []
    rows = s.execute(select(ModelVersion.site_id, ModelVersion.model).where(ModelVersion.status == "active")).all()
    for site_id, model in rows:
        if model not in MODEL_NAMES or not get_model_class(model).supports_cotrain:
            continue
        if _pending_job(s, site_id) or unused_queries(s, site_id=site_id) < settings.cotrain_min_new_queries:
            continue
        created.append(create_job(s, kind="cotrain", site_id=site_id, params={"scheduled": True}).id)
    return created


# -- the job ---------------------------------------------------------------------------------------


class _Lease:
    def __init__(self, db: Database, site_id: str, job_id: str, seconds: float) -> None:
        self.db, self.site_id, self.job_id, self.seconds = db, site_id, job_id, seconds

    def acquire(self) -> None:
        now = datetime.now(UTC)
        with self.db.session() as s:
            got = s.execute(  # type: ignore[attr-defined]
                update(Site)
                .where(
                    Site.id == self.site_id,
                    or_(Site.lock_until.is_(None), Site.lock_until < now, Site.lock_job == self.job_id),
                )
                .values(lock_job=self.job_id, lock_until=now + timedelta(seconds=self.seconds))
            ).rowcount
            holder = None if got else s.scalar(select(Site.lock_job).where(Site.id == self.site_id))
        if not got:
            raise JobFailed(f"another update of this site is running (job {holder}); try again after it finishes")

    def renew(self) -> None:
        with self.db.session() as s:
            s.execute(
                update(Site)
                .where(Site.id == self.site_id, Site.lock_job == self.job_id)
                .values(lock_until=datetime.now(UTC) + timedelta(seconds=self.seconds))
            )

    def release(self) -> None:
        with self.db.session() as s:
            s.execute(
                update(Site)
                .where(Site.id == self.site_id, Site.lock_job == self.job_id)
                .values(lock_job=None, lock_until=None)
            )


def run_cotrain(ctx: JobContext, job: Job, progress: ProgressReporter) -> dict[str, Any]:
    site_id = job.site_id
    assert site_id is not None
    lease = _Lease(ctx.db, site_id, job.id, ctx.settings.cotrain_lock_seconds)
    lease.acquire()
    progress.on_write = lease.renew
    try:
        return _update(ctx, job, progress)
    finally:
        lease.release()


def _update(ctx: JobContext, job: Job, progress: ProgressReporter) -> dict[str, Any]:
    site_id = job.site_id
    assert site_id is not None
    params = dict(job.params.get("params") or {})
    guard = bool(job.params.get("guard", True))
    seed = int(job.params.get("seed", 0))
    progress(0.0, "loading the active model, survey and queries")
    with ctx.db.session() as s:
        active = _active_version(s, site_id)
        if active is None:
            raise JobFailed("the site has no active model any more")
        parent, model_name = active.version, active.model
        model = loads(active.weights, active.config, device=ctx.device)
        holdout_ids = set((active.training or {}).get("holdout_fingerprint_ids") or [])
        survey = load_site_fingerprints(s, site_id=site_id)
        pool_ids, queries = _load_queries(s, site_id, ctx.settings.cotrain_max_queries)
    if not model.supports_cotrain:
        raise JobFailed(f"the active model ({model_name}) does not support co-training")
    if not queries:
        raise JobFailed("no unused queries to learn from")
    labeled = build_set([fp for fp in survey if fp.extra["id"] not in holdout_ids], aps=model.aps)
    holdout = build_set([fp for fp in survey if fp.extra["id"] in holdout_ids], aps=model.aps)
    unlabeled = build_set(queries, aps=model.aps)

    new_model, summary = model.cotrain(
        labeled, unlabeled, params, seed=seed, progress=progress.span(0.05, 0.9), device=ctx.device
    )
    progress(0.92, "judging the update on the survey holdout")
    before, after = evaluate(model, holdout), evaluate(new_model, holdout)
    promote, reason = _judge(before, after, ctx.settings.cotrain_tolerance, guard)
    weights, config = dumps(new_model)
    training = {
        "job_id": job.id,
        "seed": seed,
        "params": params,
        "guard": guard,
        "tolerance": ctx.settings.cotrain_tolerance,
        "n_queries": len(queries),
        "n_labeled": len(labeled),
        "n_holdout": len(holdout),
        "holdout_fingerprint_ids": sorted(holdout_ids),
        "holdout_before": before,
        "holdout_after": after,
        "decision": reason,
        "summary": summary,
    }
    with ctx.db.session() as s:
        mv = publish_version(
            s,
            site_id=site_id,
            model=model_name,
            weights=weights,
            config=config,
            metrics=after,
            training=training,
            source="cotrain",
            job_id=job.id,
            parent_version=parent,
            activate_if_first=False,
        )
        if promote:
            activate(s, site_id=site_id, version=mv.version, reason=reason)
        else:
            mv.status, mv.status_reason = "rejected", reason
        for chunk in range(0, len(pool_ids), 1000):
            s.execute(update(Query).where(Query.id.in_(pool_ids[chunk : chunk + 1000])).values(used_by_job=job.id))
        result = {
            "status": mv.status,
            "reason": reason,
            "n_queries": len(queries),
            "holdout_before": before,
            "holdout_after": after,
            "summary": summary,
        }
        finish_job(
            s,
            job_id=job.id,
            model_version=mv.version,
            metrics=after,
            result=result,
            message=f"model version {mv.version} ({mv.status}): {reason}",
        )
        version = mv.version
    if promote:
        ctx.notifier.publish(site_id)
    log.info("cotrain %s: site %s v%d %s (%s)", job.id, site_id, version, "promoted" if promote else "rejected", reason)
    return {"version": version}


def _load_queries(s: Session, site_id: str, limit: int) -> tuple[list[str], list[Fingerprint]]:
    rows = s.execute(
        select(Query.id, Query.wifi, Query.device, Query.client_timestamp, Query.created_at)
        .where(Query.site_id == site_id, Query.used_by_job.is_(None))
        .order_by(Query.id.desc())
        .limit(limit)
    ).all()
    fps = [
        Fingerprint(
            wifi=wifi_from_db(w),
            x=float("nan"),
            y=float("nan"),
            floor="",
            device=d,
            timestamp=t if t is not None else int(c.timestamp() * 1000),
        )
        for _, w, d, t, c in rows
    ]
    return [r[0] for r in rows], fps


def _judge(before: dict[str, Any] | None, after: dict[str, Any] | None, tol: float, guard: bool) -> tuple[bool, str]:
    if not guard:
        return True, "promoted without the holdout guard (guard disabled for this job)"
    if before is None or after is None:
        return False, "rejected: the active version has no labeled holdout to judge an update on"
    return holdout_guard(before, after, tol)
