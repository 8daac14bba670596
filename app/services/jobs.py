"""Job rows: create, read, report progress, finish, fail; and the context a running job gets.

A leaf: job bodies (app.services.training, app.services.cotrain) import it, and the runner table that
executes them lives in app.services.runner.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import Database
from app.errors import NotFound, Unavailable, outage_error
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
    job = Job(
        id=new_id(),
        kind=kind,
        site_id=site_id,
        state="queued",
        progress=0.0,
        message="queued",
        params=params,
        heartbeat_at=datetime.now(UTC),
    )
    s.add(job)
    s.flush()
    return job


def create_job_unless_pending(s: Session, *, kind: str, site_id: str, params: dict[str, Any]) -> Job | None:
    """`create_job` for a kind that the database keeps to one queued or running job per site (a partial unique
    index: `uq_jobs_one_pending_cotrain`); None when the site already has one, committed or being inserted by a
    concurrent transaction.

    Race-free across threads and API processes: one `INSERT ... ON CONFLICT DO NOTHING` (PostgreSQL waits for the
    concurrent insert's transaction and then skips; SQLite has one writer at a time). Nothing is raised, so the
    transaction stays usable: the scheduler goes on with its next site."""
    job_id = new_id()
    values = {
        "id": job_id,
        "kind": kind,
        "site_id": site_id,
        "state": "queued",
        "progress": 0.0,
        "message": "queued",
        "params": params,
        "heartbeat_at": datetime.now(UTC),
    }
    dialect = s.get_bind().dialect.name
    stmt: Any
    if dialect == "postgresql":
        stmt = pg_insert(Job).values(**values).on_conflict_do_nothing()
    elif dialect == "sqlite":
        stmt = sqlite_insert(Job).values(**values).on_conflict_do_nothing()
    else:
        raise NotImplementedError(f"one pending job per site is enforced on SQLite and PostgreSQL, not {dialect}")
    if not _rowcount(s.execute(stmt)):
        return None
    return s.get(Job, job_id)


def commit_and_enqueue(s: Session, *, job: Job, enqueue: Callable[[str], None]) -> str:
    """Commit the new job row, then hand its id to the workers (a worker must never look for an uncommitted
    job). Returns the job id.

    When the hand-over fails (Redis down), the job row is deleted again and the request fails with 503: nothing
    is left queued that no worker will ever see."""
    job_id = job.id
    s.commit()
    try:
        enqueue(job_id)
    except Exception as exc:
        s.rollback()
        s.execute(delete(Job).where(Job.id == job_id, Job.state == "queued"))
        s.commit()
        err = outage_error(exc)
        if err is None:
            raise
        raise Unavailable("the job queue (Redis) is unavailable, so the job was not created; retry shortly") from exc
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
            s.execute(
                update(Job)
                .where(Job.id == self._job_id)
                .values(progress=value, message=message[:500], heartbeat_at=datetime.now(UTC))
            )
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
    # Never over a success: a slow worker whose job was requeued and then finished elsewhere loses its race.
    s.execute(
        update(Job)
        .where(Job.id == job_id, Job.state != "succeeded")
        .values(state="failed", message="failed", error=error[:4000], finished_at=datetime.now(UTC))
    )


# -- liveness: claim, heartbeat, sweep ------------------------------------------------------------------------


def claim_job(s: Session, *, job_id: str, stale_s: float) -> bool:
    """Mark the job running for this worker, atomically; False when another live worker runs it (a duplicate
    delivery) or it is finished. A running job whose heartbeat is older than `stale_s` may be claimed again."""
    now = datetime.now(UTC)
    res = s.execute(
        update(Job)
        .where(
            Job.id == job_id,
            or_(
                Job.state == "queued",
                (Job.state == "running") & (or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < now - _td(stale_s))),
            ),
        )
        .values(state="running", attempts=Job.attempts + 1, started_at=now, heartbeat_at=now, message="started")
        .execution_options(synchronize_session=False)
    )
    return bool(_rowcount(res))


def _rowcount(res: Any) -> int:
    """Rows an UPDATE/DELETE touched (`Session.execute` is typed as returning `Result`; an UPDATE's is a
    `CursorResult`)."""
    return int(cast(CursorResult[Any], res).rowcount)


def _td(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


class Heartbeat:
    """A thread touching a running job's row every `every_s` (long steps report no progress for minutes)."""

    def __init__(self, db: Database, job_id: str, every_s: float) -> None:
        self._db, self._job_id, self._every = db, job_id, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"siteloc-heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                with self._db.session() as s:
                    s.execute(
                        update(Job)
                        .where(Job.id == self._job_id, Job.state == "running")
                        .values(heartbeat_at=datetime.now(UTC))
                    )
            except Exception as exc:  # the database may be down for a while; the next beat tries again
                log.warning("heartbeat of job %s failed: %s", self._job_id, type(exc).__name__)


@dataclass(frozen=True)
class Sweep:
    requeued: list[str]  # running jobs whose worker died: back to queued, to be sent again
    resent: list[str]  # queued jobs never started: sent again (a lost send)
    failed: list[str]  # died too often: failed with a message

    @property
    def to_send(self) -> list[str]:
        return self.requeued + self.resent


def sweep_jobs(s: Session, *, settings: Settings) -> Sweep:
    """Requeue running jobs with a stale heartbeat (or fail them after job_max_attempts starts), and mark queued
    jobs not started within job_stale_seconds for sending again. Idempotent: a job sent twice runs once
    (`claim_job`), and a redelivered job that already published its version only finishes its bookkeeping.
    The caller commits, then sends `to_send`."""
    now = datetime.now(UTC)
    cutoff = now - _td(settings.job_stale_seconds)
    requeued: list[str] = []
    failed: list[str] = []
    stale_running = s.execute(
        select(Job.id, Job.attempts).where(
            Job.state == "running", or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff)
        )
    ).all()
    for job_id, attempts in stale_running:
        # Guarded updates (state and stale heartbeat re-checked): several sweepers (API processes, beat) may run
        # at once, and only the one whose update lands reports the job.
        still_stale = (
            (Job.id == job_id) & (Job.state == "running") & or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff)
        )
        if attempts >= settings.job_max_attempts:
            error = (
                f"the worker running this job stopped {attempts} times (no heartbeat for "
                f"{settings.job_stale_seconds:g} s); giving up"
            )
            res = s.execute(
                update(Job)
                .where(still_stale)
                .values(state="failed", message="failed", error=error, finished_at=now)
                .execution_options(synchronize_session=False)
            )
            if _rowcount(res):
                failed.append(job_id)
        else:
            res = s.execute(
                update(Job)
                .where(still_stale)
                .values(state="queued", message="requeued: its worker stopped", heartbeat_at=now)
                .execution_options(synchronize_session=False)
            )
            if _rowcount(res):
                requeued.append(job_id)
    stale_queued = []
    for job_id in s.scalars(
        select(Job.id).where(Job.state == "queued", or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
    ).all():
        res = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == "queued", or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff))
            .values(heartbeat_at=now)
            .execution_options(synchronize_session=False)
        )
        if _rowcount(res):
            stale_queued.append(job_id)
    if requeued or failed or stale_queued:
        log.warning("job sweep: requeued %s, resent %s, failed %s", requeued, stale_queued, failed)
    return Sweep(requeued=requeued, resent=stale_queued, failed=failed)
