"""Everything an API process holds for its lifetime, built once from Settings."""

from __future__ import annotations

import ctypes
import gc
import logging
import platform

from app.config import Settings
from app.db import Database
from app.security import rate_limiter
from app.services.jobs import JobContext
from app.services.keys import KeyAuthenticator
from app.services.locate import Locator
from app.services.notify import make_notifier
from app.services.plans import PlanCache
from app.services.querylog import QueryWriter
from app.services.registry import ModelCache
from app.services.sessions import SessionHook, Tracker, make_store
from worker.dispatch import CeleryDispatcher, Dispatcher, EmbeddedScheduler, EmbeddedWorker

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.resolved_database_url)
        self.device = settings.torch_device()
        self.notifier = make_notifier(settings.redis_url)
        self.models = ModelCache(
            self.db,
            device=self.device,
            refresh_s=settings.model_refresh_seconds,
            notifier=self.notifier,
            max_bytes=settings.model_cache_mb * 1024 * 1024,
            negative_ttl_s=min(2.0, settings.model_refresh_seconds),
            batch_rows=settings.inference_max_batch,
            batch_wait_ms=settings.inference_max_wait_ms,
        )
        self.writer = QueryWriter(
            self.db, max_rows=settings.query_commit_max_rows, max_wait_ms=settings.query_commit_max_wait_ms
        )
        bootstrap = settings.bootstrap_admin_key.get_secret_value() if settings.bootstrap_admin_key else None
        self.limiter = rate_limiter(settings)
        self.auth = KeyAuthenticator(self.db, bootstrap_key=bootstrap, ttl_s=settings.key_cache_seconds)
        self.job_context = JobContext(db=self.db, settings=settings, device=self.device, notifier=self.notifier)
        self.dispatcher: Dispatcher = (
            EmbeddedWorker(self.job_context, lock_path=settings.embedded_worker_lock_path())
            if settings.embedded
            else CeleryDispatcher(settings)
        )
        # Tracking sessions: Redis in full mode (any API process continues a session), a dict in embedded mode.
        lock = settings.embedded_worker_lock_path() if settings.embedded else None
        self.session_store = make_store(
            settings.redis_url, settings.session_ttl_s, lock.with_name(lock.name + ".sessions") if lock else None
        )
        self.plans = PlanCache(self.db)
        self.tracker = Tracker(self.session_store, self.plans)
        self.locator = Locator(
            settings=settings,
            models=self.models,
            writer=self.writer,
            sessions=SessionHook(self.tracker),
            plans=self.plans,
        )
        # Full mode schedules with Celery beat; embedded mode with a thread running the same check.
        # Full mode also sweeps dead workers' jobs from each API process (cotrain=False: beat schedules updates).
        self.scheduler = EmbeddedScheduler(
            self.job_context,
            self.dispatcher,
            settings.cotrain_check_seconds,
            cotrain=settings.embedded,
            primary=self.dispatcher.primary if isinstance(self.dispatcher, EmbeddedWorker) else None,
        )

    def start(self) -> None:
        tune_malloc(self.settings.malloc_keep_mb)
        self.writer.start()
        self.models.start()
        self.dispatcher.start()
        if self.scheduler is not None:
            self.scheduler.start()
        freeze_startup_objects()
        log.info(
            "siteloc runtime started (%s mode, device %s)",
            "embedded" if self.settings.embedded else "full",
            self.device,
        )

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
        self.dispatcher.stop()
        self.models.stop()
        self.writer.stop()
        self.notifier.close()
        close = getattr(self.session_store, "close", None)
        if close is not None:
            close()
        self.db.dispose()


_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
_MMAP_MAX = 32 * 1024 * 1024  # glibc's own ceiling for its dynamic threshold on 64-bit


def tune_malloc(keep_mb: int) -> bool:
    """Keep up to `keep_mb` MiB of freed memory for reuse and serve allocations up to 32 MiB from it (glibc only;
    True when applied). glibc's defaults adapt the same way, but trim the heap whenever more than twice the largest
    freed block is free at its top: a predict's few-MiB temporaries then go back to the OS after every batch and
    the next batch faults fresh pages in again. Setting the thresholds turns that adaptation off, so both are set."""
    if keep_mb <= 0 or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX) == 1
    ok = libc.mallopt(_M_TRIM_THRESHOLD, keep_mb * 1024 * 1024) == 1 and ok
    if not ok:
        log.warning("could not set glibc's malloc thresholds; its defaults stay")
    return ok


_frozen = False


def freeze_startup_objects() -> None:
    """Move everything alive once the first runtime of this process has started (modules, the app, the runtime)
    out of the garbage collector's sight (`gc.freeze`), once per process. A full collection otherwise walks
    those ~260,000 objects: about 140 ms during which the process answers nothing, the p99 of a loaded server.
    Objects created later are collected as usual; frozen ones are never freed, which suits what lives as long as
    the process."""
    global _frozen
    if _frozen:
        return
    _frozen = True
    gc.collect()
    gc.freeze()
