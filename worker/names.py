"""Celery task names: what the API enqueues and what the worker registers (no Celery import needed)."""

RUN_JOB_TASK = "siteloc.run_job"
SCHEDULE_TASK = "siteloc.schedule_cotrain"
SWEEP_TASK = "siteloc.sweep_jobs"
RETENTION_TASK = "siteloc.query_retention"
