"""The Celery application, built from Settings (full mode: Redis broker). Its tasks are in worker.tasks."""

from __future__ import annotations

from celery import Celery

from app.config import Settings, get_settings
from worker.names import RETENTION_TASK, SCHEDULE_TASK, SWEEP_TASK


def make_celery(settings: Settings) -> Celery:
    app = Celery("siteloc", broker=settings.redis_url or "memory://", include=["worker.tasks"])
    app.conf.update(
        task_default_queue=settings.job_queue,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # Jobs are idempotent (see app.services.runner.execute_job), so late acks are safe: a job whose
        # worker dies is redelivered instead of lost.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.job_soft_time_limit_s,
        task_time_limit=settings.job_hard_time_limit_s,
        # Above the hard limit: Redis must not redeliver a job that is still running.
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        # Start the co-training updates that are due (enough new queries), every cotrain_check_seconds.
        beat_schedule={
            "schedule-cotrain": {"task": SCHEDULE_TASK, "schedule": settings.cotrain_check_seconds},
            # Requeue jobs whose worker died (stale heartbeat), resend queued jobs never started.
            "sweep-jobs": {
                "task": SWEEP_TASK,
                "schedule": settings.job_sweep_seconds,
                "options": {"expires": settings.job_sweep_seconds},  # a sweep stuck behind a job is dropped
            },
            # Delete queries past SITELOC_QUERY_RETENTION_DAYS (a no-op when unset).
            "query-retention": {"task": RETENTION_TASK, "schedule": settings.cotrain_check_seconds},
        },
    )
    return app


celery_app = make_celery(get_settings())
