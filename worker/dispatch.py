"""Hand a committed job to whoever runs jobs: Celery workers (full mode) or the in-process worker and
scheduler (embedded mode). The composition root (app.runtime) picks one."""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Protocol

from sqlalchemy import select, update

from app.config import Settings
from app.models import Job
from app.services.cotrain import schedule_due_updates
from app.services.jobs import JobContext, sweep_jobs
from app.services.runner import execute_job
from worker.names import RUN_JOB_TASK

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def enqueue(self, job_id: str) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...


class CeleryDispatcher:
    """Full mode: the job id goes to the Redis broker; `siteloc worker` processes run it."""

    def __init__(self, settings: Settings) -> None:
        from worker.celery_app import make_celery  # here, not at import: embedded mode never builds a Celery app

        self._celery = make_celery(settings)

    def enqueue(self, job_id: str) -> None:
        self._celery.send_task(RUN_JOB_TASK, args=[job_id])

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None


class EmbeddedWorker:
    """Embedded mode: one background thread runs jobs with the same code as the Celery task.

    Requests never wait for training. Jobs left queued or running by a previous
    process (killed mid-job) are picked up again at start.
    """

    _STOP = "__stop__"

    def __init__(self, ctx: JobContext) -> None:
        self._ctx = ctx
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="siteloc-embedded-worker", daemon=True)
        self._started = False

    def enqueue(self, job_id: str) -> None:
        self._queue.put(job_id)

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        with self._ctx.db.session() as s:
            # One process runs embedded jobs: a job "running" at start was running in a process that died.
            s.execute(update(Job).where(Job.state == "running").values(state="queued", message="requeued: restarted"))
            pending = list(
                s.scalars(select(Job.id).where(Job.state.in_(("queued", "running"))).order_by(Job.created_at))
            )
        for job_id in pending:
            self._queue.put(job_id)
        self._thread.start()

    def stop(self) -> None:
        if self._started:
            self._queue.put(self._STOP)
            self._thread.join(timeout=30)

    def idle(self) -> bool:
        return self._queue.unfinished_tasks == 0

    def _run(self) -> None:
        while True:
            job_id = self._queue.get()
            try:
                if job_id == self._STOP:
                    return
                execute_job(self._ctx, job_id)
            except Exception:  # execute_job records failures itself; this is a last resort
                log.exception("embedded worker: job %s", job_id)
            finally:
                self._queue.task_done()


class EmbeddedScheduler:
    """Embedded mode's stand-in for Celery beat: every `every_s`, start the co-training updates that are due;
    every `job_sweep_seconds`, sweep jobs whose worker died (the same `sweep_jobs` as beat's task).

    In full mode each API process runs it with `cotrain=False`, sweeping only: beat's sweep task waits in the job
    queue behind running jobs, and a dead worker's job should not wait for a busy one to finish. Sweeps are
    idempotent, so several sweepers at once are harmless."""

    def __init__(self, ctx: JobContext, dispatcher: Dispatcher, every_s: float, *, cotrain: bool = True) -> None:
        self._ctx = ctx
        self._cotrain_on = cotrain
        self._dispatcher = dispatcher
        self._every = every_s
        self._sweep_every = ctx.settings.job_sweep_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="siteloc-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        now = time.monotonic()
        next_cotrain, next_sweep = now + self._every, now + self._sweep_every
        while not self._stop.wait(max(0.0, min(next_cotrain, next_sweep) - time.monotonic())):
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + self._sweep_every
                self.sweep()
            if now >= next_cotrain:
                next_cotrain = now + self._every
                if self._cotrain_on:
                    self._cotrain()

    def sweep(self) -> list[str]:
        try:
            with self._ctx.db.session() as s:
                result = sweep_jobs(s, settings=self._ctx.settings)
            for job_id in result.to_send:  # committed above
                self._dispatcher.enqueue(job_id)
            return result.to_send
        except Exception:
            log.exception("sweeping jobs failed; retrying next round")
            return []

    def _cotrain(self) -> None:
        try:
            with self._ctx.db.session() as s:
                created = schedule_due_updates(s, settings=self._ctx.settings)
            for job_id in created:  # committed above
                self._dispatcher.enqueue(job_id)
        except Exception:
            log.exception("scheduling co-training updates failed; retrying next round")
