"""Background jobs: creation, progress, and execution (the body of the Celery task).

`execute_job` is idempotent: a job that already finished is left alone, and a
job redelivered after a worker crash runs again from the start (model versions
are published in the same transaction that marks the job succeeded, so a
crashed run never leaves a half-written version behind).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from app.config import Settings
from app.db import Database
from app.errors import NotFound, SitelocError
from app.models import Job, ModelVersion
from app.schemas.api import JobOut
from app.services.ids import new_id
from app.services.notify import LocalNotifier

log = logging.getLogger(__name__)


def worker_id() -> str:
    """Which process runs a job (recorded in its result): "host/pid" (computed late: workers fork)."""
    return f"{socket.gethostname()}/{os.getpid()}"


@dataclass
class JobContext:
    """What a job needs from its process: the database, settings, the device, the notice bus."""

    db: Database
    settings: Settings
    device: str
    notifier: LocalNotifier


class JobFailed(Exception):
    """An expected failure with a message for the user (bad data, unsupported option)."""


def create_job(s: Any, *, kind: str, site_id: str | None, params: dict[str, Any]) -> Job:
    job = Job(id=new_id(), kind=kind, site_id=site_id, state="queued", progress=0.0, message="queued", params=params)
    s.add(job)
    s.flush()
    return job


def get_job(s: Any, job_id: str) -> Job:
    job = s.get(Job, job_id) if len(job_id) <= 32 else None
    if job is None:
        raise NotFound(f"job {job_id!r} not found")
    return job


def job_out(job: Job) -> JobOut:
    return JobOut.model_validate(job, from_attributes=True)


class ProgressReporter:
    """Writes progress to the job row, at most every `every_s` seconds (each write is its own commit)."""

    def __init__(self, db: Database, job_id: str, *, lo: float = 0.0, hi: float = 1.0, every_s: float = 1.0) -> None:
        self._db = db
        self._job_id = job_id
        self._lo, self._hi = lo, hi
        self._every = every_s
        self._last = 0.0
        # Called after each progress write (e.g. to renew a lease while the job is alive).
        self.on_write: Callable[[], None] | None = None

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        if now - self._last < self._every and fraction < 1.0:
            return
        self._last = now
        value = self._lo + (self._hi - self._lo) * min(max(fraction, 0.0), 1.0)
        with self._db.session() as s:
            s.execute(update(Job).where(Job.id == self._job_id).values(progress=value, message=message[:500]))
        if self.on_write is not None:
            self.on_write()

    def span(self, lo: float, hi: float) -> ProgressReporter:
        """A reporter for a sub-step that maps its 0..1 onto lo..hi of this one."""
        a, b = self._lo + (self._hi - self._lo) * lo, self._lo + (self._hi - self._lo) * hi
        child = ProgressReporter(self._db, self._job_id, lo=a, hi=b, every_s=self._every)
        child.on_write = self.on_write
        return child


Runner = Callable[[JobContext, Job, ProgressReporter], dict[str, Any]]


def _runners() -> dict[str, Runner]:
    from app.services.cotrain import run_cotrain
    from app.services.training import run_finetune

    return {"finetune": run_finetune, "cotrain": run_cotrain}


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
        job.state, job.attempts = "running", job.attempts + 1
        job.started_at, job.message = datetime.now(UTC), "started"
        kind = job.kind
    runner = _runners().get(kind)
    progress = ProgressReporter(ctx.db, job_id)
    try:
        if runner is None:
            raise JobFailed(f"unknown job kind {kind!r}")
        with ctx.db.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
        runner(ctx, job, progress)
        return "succeeded"
    except (JobFailed, SitelocError) as exc:
        fail_job(ctx.db, job_id, str(exc.detail if isinstance(exc, SitelocError) else exc))
        return "failed"
    except Exception as exc:
        log.exception("job %s (%s) crashed", job_id, kind)
        fail_job(ctx.db, job_id, f"internal error: {type(exc).__name__}: {exc}", tb=traceback.format_exc())
        return "failed"


def finish_job(
    s: Any,
    job_id: str,
    *,
    model_version: int | None,
    metrics: dict[str, Any] | None,
    result: dict[str, Any],
    message: str,
) -> None:
    """Mark success; call inside the transaction that publishes the job's output."""
    result = {**result, "worker": worker_id()}
    s.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(
            state="succeeded",
            progress=1.0,
            message=message,
            model_version=model_version,
            metrics=metrics,
            result=result,
            error=None,
            finished_at=datetime.now(UTC),
        )
    )


def fail_job(db: Database, job_id: str, error: str, tb: str | None = None) -> None:
    if tb:
        log.debug("job %s traceback:\n%s", job_id, tb)
    with db.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(state="failed", message="failed", error=error[:4000], finished_at=datetime.now(UTC))
        )
