"""Celery tasks: thin wrappers. A task takes a job id and calls the service that does the work.

Time limits are Celery's (worker.celery_app); a job past its soft limit is ended by
app.services.runner.execute_job, which translates every failure of a job in one place.
"""

from __future__ import annotations

import logging

from celery.signals import worker_process_init

from app.config import get_settings
from app.db import Database
from app.services.cotrain import schedule_due_updates
from app.services.jobs import JobContext, sweep_jobs
from app.services.notify import make_notifier
from app.services.retention import delete_expired_queries
from app.services.runner import execute_job
from worker.celery_app import celery_app
from worker.names import RETENTION_TASK, RUN_JOB_TASK, SCHEDULE_TASK, SWEEP_TASK

log = logging.getLogger(__name__)
_ctx: JobContext | None = None


def reset_context() -> None:
    global _ctx
    _ctx = None


@worker_process_init.connect
def _fresh_engine_after_fork(**_: object) -> None:
    # Database connections must not be shared across fork: rebuild the worker context in each child.
    reset_context()


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
    return execute_job(context(), job_id)


@celery_app.task(name=SCHEDULE_TASK)
def schedule_cotrain() -> list[str]:
    """Beat's periodic check: create and enqueue the co-training jobs that are due."""
    ctx = context()
    with ctx.db.session() as s:
        created = schedule_due_updates(s, settings=ctx.settings)
    for job_id in created:  # committed above
        celery_app.send_task(RUN_JOB_TASK, args=[job_id])
    return created


@celery_app.task(name=SWEEP_TASK)
def sweep() -> list[str]:
    """Beat's periodic sweep: requeue jobs whose worker died, resend jobs never started (see sweep_jobs)."""
    ctx = context()
    with ctx.db.session() as s:
        result = sweep_jobs(s, settings=ctx.settings)
    for job_id in result.to_send:  # committed above
        celery_app.send_task(RUN_JOB_TASK, args=[job_id])
    return result.to_send


@celery_app.task(name=RETENTION_TASK)
def query_retention() -> int:
    """Beat's periodic retention pass over the query log (SITELOC_QUERY_RETENTION_DAYS)."""
    ctx = context()
    return delete_expired_queries(ctx.db, retention_days=ctx.settings.query_retention_days)
