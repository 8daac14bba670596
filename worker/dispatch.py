"""Hand a committed job to whoever runs jobs: Celery workers (full mode) or the in-process worker and
scheduler (embedded mode). The composition root (app.runtime) picks one."""

from __future__ import annotations

import fcntl
import logging
import queue
import threading
import time
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import select, update

from app.config import Settings
from app.models import Job
from app.services.cotrain import schedule_due_updates
from app.services.jobs import JobContext, sweep_jobs
from app.services.retention import delete_expired_queries
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

    Requests never wait for training. Several API processes may share one SQLite file (`siteloc serve
    --workers N`): exactly one of them, the holder of an exclusive lock on `lock_path`, runs jobs. It
    takes jobs enqueued in its own process at once and, every `poll_s`, the jobs other processes
    committed as queued (their `enqueue` only records the job, already committed, for the holder to
    find). Jobs left queued or running by a previous holder (killed mid-job) are picked up again when
    the lock is taken; if the holder dies, another process takes the lock over.
    """

    _STOP = "__stop__"

    def __init__(self, ctx: JobContext, *, lock_path: Path | None = None, poll_s: float = 1.0) -> None:
        self._ctx = ctx
        self._queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="siteloc-embedded-worker", daemon=True)
        self._started = False
        self._lock_path = lock_path
        self._lock_file: IO[bytes] | None = None
        self._poll_s = poll_s
        self._known: set[str] = set()  # job ids this process has queued (never run one twice)
        self._known_lock = threading.Lock()
        self.primary = threading.Event()  # set while this process is the one running jobs
        self._stopping = threading.Event()

    def enqueue(self, job_id: str) -> None:
        if self.primary.is_set():
            self._put(job_id)
        # else: the job row is committed as queued; the process running jobs polls for it

    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._thread.start()

    def stop(self) -> None:
        if self._started:
            self._stopping.set()
            self._queue.put(self._STOP)
            self._thread.join(timeout=30)
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock

    def idle(self) -> bool:
        return self._queue.unfinished_tasks == 0

    def _put(self, job_id: str) -> None:
        with self._known_lock:
            if job_id in self._known:
                return
            self._known.add(job_id)
        self._queue.put(job_id)

    def _try_lock(self) -> bool:
        if self._lock_path is None:
            return True
        f = open(self._lock_path, "ab")  # noqa: SIM115 - held open for the life of the process
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        self._lock_file = f
        return True

    def _pending(self, states: tuple[str, ...]) -> list[str]:
        with self._ctx.db.session() as s:
            return list(s.scalars(select(Job.id).where(Job.state.in_(states)).order_by(Job.created_at)))

    def _run(self) -> None:
        while not self.primary.is_set():  # another process runs jobs; take over if it goes away
            if self._try_lock():
                self.primary.set()
                break
            if self._stopping.wait(self._poll_s * 5):
                return
        with self._ctx.db.session() as s:
            # One process runs embedded jobs: a job "running" when it takes over was running in a process that died.
            s.execute(update(Job).where(Job.state == "running").values(state="queued", message="requeued: restarted"))
        for job_id in self._pending(("queued",)):
            self._put(job_id)
        while True:
            try:
                job_id = self._queue.get(timeout=self._poll_s)
            except queue.Empty:
                try:
                    for jid in self._pending(("queued",)):  # committed by another API process
                        self._put(jid)
                except Exception:
                    log.warning("embedded worker: polling for queued jobs failed", exc_info=True)
                continue
            try:
                if job_id == self._STOP:
                    return
                execute_job(self._ctx, job_id)
            except Exception:  # execute_job records failures itself; this is a last resort
                log.exception("embedded worker: job %s", job_id)
            finally:
                self._queue.task_done()


class EmbeddedScheduler:
    """Embedded mode's stand-in for Celery beat: every `every_s`, start the co-training updates that are due and
    apply the query-log retention; every `job_sweep_seconds`, sweep jobs whose worker died (the same `sweep_jobs` as
    beat's task). With several embedded API processes only the one running jobs (`primary`) does any of it.

    In full mode each API process runs it with `cotrain=False`, sweeping only: beat's sweep task waits in the job
    queue behind running jobs, and a dead worker's job should not wait for a busy one to finish. Sweeps are
    idempotent, so several sweepers at once are harmless."""

    def __init__(
        self,
        ctx: JobContext,
        dispatcher: Dispatcher,
        every_s: float,
        *,
        cotrain: bool = True,
        primary: threading.Event | None = None,
    ) -> None:
        self._ctx = ctx
        self._cotrain_on = cotrain
        self._dispatcher = dispatcher
        self._primary = primary  # with several API processes, only the one running jobs schedules them
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
            if self._primary is not None and not self._primary.is_set():
                next_cotrain, next_sweep = now + self._every, now + self._sweep_every
                continue
            if now >= next_sweep:
                next_sweep = now + self._sweep_every
                self.sweep()
            if now >= next_cotrain:
                next_cotrain = now + self._every
                if self._cotrain_on:
                    self._cotrain()
                    self._retention()

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

    def _retention(self) -> None:
        try:
            delete_expired_queries(self._ctx.db, retention_days=self._ctx.settings.query_retention_days)
        except Exception:
            log.exception("query retention failed; retrying next round")
