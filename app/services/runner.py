"""Running a job: the table of job bodies by kind, and `execute_job` (the body of the Celery task and of the
embedded worker).

`execute_job` is idempotent: a job that already finished is left alone, and a job redelivered after a worker
crash runs again from the start (model versions are published in the same transaction that marks the job
succeeded, so a crashed or stopped run never leaves a half-written version behind). It is the one place where
an exception that ends a job becomes the job's error (see app.errors.job_failure).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import select

from app.errors import JobFailed, job_failure
from app.models import Job, ModelVersion
from app.services.cotrain import run_cotrain
from app.services.jobs import Heartbeat, JobContext, ProgressReporter, claim_job, fail_job
from app.services.training import run_finetune

log = logging.getLogger(__name__)

Runner = Callable[[JobContext, Job, ProgressReporter], dict[str, Any]]
RUNNERS: dict[str, Runner] = {"finetune": run_finetune, "cotrain": run_cotrain}

JOB_INTERNAL_ERRORS = Counter(
    "siteloc_job_internal_errors_total", "Jobs that ended with an internal error (a bug, not bad input)", ["kind"]
)


def execute_job(ctx: JobContext, job_id: str) -> str:
    """Run a job to completion; returns its final state. Safe to call twice for the same job."""
    with ctx.db.session() as s:
        job = s.get(Job, job_id)
        if job is None:
            log.warning("job %s does not exist (deleted?); nothing to do", job_id)
            return "missing"
        if job.state in ("succeeded", "failed"):
            return job.state
        # Redelivered after a crash that happened after publishing: finish the bookkeeping only.
        done = s.scalar(select(ModelVersion.version).where(ModelVersion.job_id == job_id))
        if done is not None:
            job.state, job.progress, job.model_version = "succeeded", 1.0, done
            job.finished_at = datetime.now(UTC)
            return "succeeded"
        kind = job.kind
        # Atomic: a duplicate delivery (the sweeper's resend, Redis' redelivery) while a live worker runs the job
        # finds it claimed and leaves it alone.
        if not claim_job(s, job_id=job_id, stale_s=ctx.settings.job_stale_seconds):
            log.info("job %s is already running elsewhere; this delivery does nothing", job_id)
            return "running"
    with Heartbeat(ctx.db, job_id, ctx.settings.job_heartbeat_seconds):
        return _run_claimed(ctx, job_id, kind)


def _run_claimed(ctx: JobContext, job_id: str, kind: str) -> str:
    try:
        runner = RUNNERS.get(kind)
        if runner is None:
            raise JobFailed(f"unknown job kind {kind!r}")
        with ctx.db.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
        runner(ctx, job, ProgressReporter(ctx.db, job_id))
        return "succeeded"
    except Exception as exc:  # Celery's SoftTimeLimitExceeded is an Exception too: job_failure names it
        failure = job_failure(exc, soft_time_limit_s=ctx.settings.job_soft_time_limit_s)
        if failure.internal:
            JOB_INTERNAL_ERRORS.labels(kind=kind).inc()
            log.exception("job %s (%s) crashed", job_id, kind)
        else:
            log.info("job %s (%s) failed: %s", job_id, kind, failure.error)
        with ctx.db.session() as s:
            fail_job(s, job_id=job_id, error=failure.error)
        return "failed"
