"""Job rows: create, read, report progress, finish, fail; and the context a running job gets.

A leaf: job bodies (app.services.training, app.services.cotrain) import it, and the runner table that
executes them lives in app.services.runner.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import Database
from app.errors import NotFound
from app.models import Job
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


def create_job(s: Session, *, kind: str, site_id: str | None, params: dict[str, Any]) -> Job:
    job = Job(id=new_id(), kind=kind, site_id=site_id, state="queued", progress=0.0, message="queued", params=params)
    s.add(job)
    s.flush()
    return job


def commit_and_enqueue(s: Session, *, job: Job, enqueue: Callable[[str], None]) -> str:
    """Commit the new job row, then hand its id to the workers (a worker must never look for an uncommitted
    job). Returns the job id."""
    job_id = job.id
    s.commit()
    enqueue(job_id)
    return job_id


def get_job(s: Session, *, job_id: str) -> Job:
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


def finish_job(
    s: Session,
    *,
    job_id: str,
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


def fail_job(s: Session, *, job_id: str, error: str) -> None:
    """Mark failure with the error shown to the user (caller commits)."""
    s.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(state="failed", message="failed", error=error[:4000], finished_at=datetime.now(UTC))
    )
