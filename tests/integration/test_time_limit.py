"""A job past the worker's soft time limit ends `failed` with a time-limit message and leaves no version.

Full mode only: the limit is Celery's, set from Settings (SITELOC_JOB_SOFT_TIME_LIMIT_S) on a worker
subprocess of its own, which consumes a queue of its own (SITELOC_JOB_QUEUE) so the session's worker with
the default limits never picks the job up.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Backend, start_worker, stop_worker
from tests.integration.conftest import ADMIN, Api, uji_survey

pytestmark = pytest.mark.full

SOFT_LIMIT_S = 10  # the smallest Settings allows


def test_finetune_past_the_soft_time_limit_fails_and_keeps_no_version(backend: Backend, tmp_path: Path) -> None:
    if backend.mode != "full" or backend.redis_url is None:
        pytest.skip("needs a Celery worker: set SITELOC_TEST_DATABASE_URL and SITELOC_TEST_REDIS_URL")
    from app.main import create_app

    queue = f"siteloc-time-limit-{uuid.uuid4().hex[:8]}"
    limits = {"job_queue": queue, "job_soft_time_limit_s": SOFT_LIMIT_S, "job_hard_time_limit_s": 120}
    env = {f"SITELOC_{k.upper()}": str(v) for k, v in limits.items()}
    worker = start_worker(backend.database_url, backend.redis_url, tmp_path, env)
    try:
        with TestClient(create_app(backend.settings(**limits))) as client:
            api = Api(client, backend)
            site = api.create_site("time-limited")
            api.upload(site, uji_survey())
            # A network with no early stop and no step cap: it trains far longer than the limit.
            params = {"epochs": 1_000_000, "max_steps": 100_000_000, "patience": 1_000_000}
            r = client.post(f"/sites/{site}/finetune", json={"model": "dnn", "params": params}, headers=ADMIN)
            assert r.status_code == 202, r.text
            job = api.wait_job(r.json()["job_id"], timeout=180)
            assert job["state"] == "failed", job
            assert job["error"].startswith(f"time limit of {SOFT_LIMIT_S} s exceeded"), job
            r = client.get(f"/sites/{site}/models", headers=ADMIN)
            assert r.status_code == 200 and r.json() == []  # nothing half-written
            assert client.get(f"/sites/{site}", headers=ADMIN).json()["active_model"] is None
    finally:
        stop_worker(worker)
