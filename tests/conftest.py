"""Test set-up shared by unit and integration tests.

Integration tests run in embedded mode (SQLite, in-process worker) by default.
With SITELOC_TEST_DATABASE_URL (a PostgreSQL server URL) and
SITELOC_TEST_REDIS_URL set, the same tests run in full mode: a fresh PostgreSQL
database, Redis, and a real `siteloc worker` (Celery) subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
SHARED_DATA = ROOT.parent / "shared" / "data"
ADMIN_KEY = "test-admin-key-0123456789"


def full_mode_urls() -> tuple[str, str] | None:
    db, redis = os.environ.get("SITELOC_TEST_DATABASE_URL"), os.environ.get("SITELOC_TEST_REDIS_URL")
    return (db, redis) if db and redis else None


def pytest_report_header(config: pytest.Config) -> list[str]:
    full = full_mode_urls()
    if full is None:
        return ["siteloc integration mode: embedded (SQLite file, in-process worker, no Redis)"]
    return [f"siteloc integration mode: full (PostgreSQL {_hide(full[0])}, Redis {full[1]}, Celery worker subprocess)"]


def _hide(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@dataclass
class Backend:
    mode: str
    database_url: str
    redis_url: str | None
    worker: subprocess.Popen[bytes] | None = None

    def settings(self, **overrides: Any) -> Any:
        from app.config import Settings

        values: dict[str, Any] = {
            "database_url": self.database_url,
            "redis_url": self.redis_url,
            "bootstrap_admin_key": ADMIN_KEY,
            "device": "cpu",
            "model_refresh_seconds": 0.5,
            "key_cache_seconds": 0.0,
            # Tests call the job sweeper themselves (test_fault_tolerance.py); a background sweep in another app
            # of the session must not race them. scripts/fault_test.py runs the real background sweepers.
            "job_sweep_seconds": 3600.0,
        }
        values.update(overrides)
        return Settings(**values)


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    from app.migrate import upgrade

    full = full_mode_urls()
    if full is None:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'siteloc.db'}"
        upgrade(url)
        yield Backend(mode="embedded", database_url=url, redis_url=None)
        return
    server_url, redis_url = full
    url = _create_pg_database(server_url)
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    upgrade(url)
    worker = start_worker(url, redis_url, tmp_path_factory.mktemp("worker"))
    try:
        yield Backend(mode="full", database_url=url, redis_url=redis_url, worker=worker)
    finally:
        stop_worker(worker)
        _drop_pg_database(server_url, url)


def _create_pg_database(server_url: str) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(server_url)
    name = f"siteloc_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return base.set(database=name).render_as_string(hide_password=False)


def _drop_pg_database(server_url: str, url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = make_url(url).database
    admin = create_engine(make_url(server_url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    worker.terminate()
    try:
        worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        worker.kill()


def start_worker(
    db_url: str, redis_url: str, log_dir: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """A `siteloc worker` subprocess (one training process), once Celery says it is ready."""
    env = {
        **os.environ,
        "SITELOC_DATABASE_URL": db_url,
        "SITELOC_REDIS_URL": redis_url,
        "SITELOC_DEVICE": "cpu",
        **(extra_env or {}),
    }
    log = open(log_dir / "worker.log", "wb")  # noqa: SIM115 - lives as long as the worker
    proc = subprocess.Popen(
        [sys.executable, "-c", "from app.cli import main; main()", "worker", "--concurrency", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = (log_dir / "worker.log").read_text(errors="replace")
        if "ready." in text:
            print(f"\nCelery worker subprocess pid {proc.pid} ready (log {log_dir / 'worker.log'})")
            return proc
        if proc.poll() is not None:
            raise RuntimeError(f"celery worker exited early:\n{text}")
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("celery worker did not become ready in 60 s")
