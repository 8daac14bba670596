"""Celery tasks: thin wrappers. A task takes a job id and calls the service that does the work."""

from __future__ import annotations

import logging

from celery.exceptions import SoftTimeLimitExceeded

from app.config import get_settings
from app.db import Database
from app.services.dispatch import RUN_JOB_TASK, SCHEDULE_TASK, CeleryDispatcher
from app.services.jobs import JobContext, execute_job, fail_job
from app.services.notify import make_notifier
from worker.celery_app import celery_app

log = logging.getLogger(__name__)
_ctx: JobContext | None = None


def reset_context() -> None:
    global _ctx
    _ctx = None


def context() -> JobContext:
    global _ctx
    if _ctx is None:
        settings = get_settings()
        _ctx = JobContext(
            db=Database(settings.resolved_database_url),
            settings=settings,
            device=settings.torch_device(),
            notifier=make_notifier(settings.redis_url),
        )
    return _ctx


@celery_app.task(name=RUN_JOB_TASK)
def run_job(job_id: str) -> str:
    ctx = context()
    try:
        return execute_job(ctx, job_id)
    except SoftTimeLimitExceeded:
        fail_job(ctx.db, job_id, f"time limit of {ctx.settings.job_soft_time_limit_s} s exceeded")
        return "failed"


@celery_app.task(name=SCHEDULE_TASK)
def schedule_cotrain() -> list[str]:
    """Beat's periodic check: create and enqueue the co-training jobs that are due."""
    from app.services.cotrain import schedule_due_updates

    ctx = context()
    dispatcher = CeleryDispatcher(ctx.settings)
    created = schedule_due_updates(ctx.db, ctx.settings)
    for job_id in created:
        dispatcher.enqueue(job_id)
    return created
