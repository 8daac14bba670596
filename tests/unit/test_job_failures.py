"""How a job ends when its body raises: the one translation point (app.errors.job_failure via execute_job).

Real database (SQLite), real Celery exception class, real job rows; only the job body is a stand-in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from prometheus_client import REGISTRY, generate_latest
from sqlalchemy import func, select

from app.config import Settings
from app.db import Database
from app.errors import JobFailed, NotFound
from app.migrate import upgrade
from app.models import Job, ModelVersion, Site
from app.services.jobs import JobContext, ProgressReporter, create_job, get_job
from app.services.notify import LocalNotifier
from app.services.registry import publish_version
from app.services.runner import RUNNERS, execute_job
from ml.errors import InsufficientData, InvalidParams

Body = Callable[[JobContext, Job, ProgressReporter], dict[str, Any]]


@pytest.fixture
def ctx(tmp_path: Path) -> JobContext:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    db = Database(url)
    with db.session() as s:
        s.add(Site(id="s1", name="s1"))
    settings = Settings(database_url=url, redis_url="", device="cpu", job_soft_time_limit_s=30)
    return JobContext(db=db, settings=settings, device="cpu", notifier=LocalNotifier())


def _run(ctx: JobContext, monkeypatch: pytest.MonkeyPatch, body: Body) -> Job:
    monkeypatch.setitem(RUNNERS, "finetune", body)
    with ctx.db.session() as s:
        job_id = create_job(s, kind="finetune", site_id="s1", params={}).id
    assert execute_job(ctx, job_id) == "failed"
    with ctx.db.session() as s:
        return get_job(s, job_id=job_id)


def _versions(ctx: JobContext) -> int:
    with ctx.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(ModelVersion)) or 0)


def _internal_errors() -> float:
    return REGISTRY.get_sample_value("siteloc_job_internal_errors_total", {"kind": "finetune"}) or 0.0


def test_soft_time_limit_fails_the_job_with_a_time_limit_message_and_keeps_no_version(
    ctx: JobContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    def stopped_while_publishing(ctx: JobContext, job: Job, _progress: ProgressReporter) -> dict[str, Any]:
        with ctx.db.session() as s:  # the version is written, the transaction not yet committed...
            publish_version(
                s,
                site_id="s1",
                model="wknn",
                weights=b"",
                config={},
                metrics=None,
                training={},
                source="finetune",
                job_id=job.id,
            )
            raise SoftTimeLimitExceeded()  # ...when Celery's soft limit strikes (it raises inside the job)

    before = _internal_errors()
    job = _run(ctx, monkeypatch, stopped_while_publishing)
    assert job.state == "failed"
    assert job.error is not None and job.error.startswith("time limit of 30 s exceeded"), job.error
    assert "internal error" not in job.error
    assert _versions(ctx) == 0
    with ctx.db.session() as s:
        site = s.get(Site, "s1")
        assert site is not None and site.active_version is None
    assert _internal_errors() == before  # not a bug


def test_a_programming_error_stays_an_internal_error_logged_and_counted(
    ctx: JobContext, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def buggy(_ctx: JobContext, _job: Job, _progress: ProgressReporter) -> dict[str, Any]:
        return {"k": {}["missing"]}

    before = _internal_errors()
    with caplog.at_level(logging.ERROR, logger="app.services.runner"):
        job = _run(ctx, monkeypatch, buggy)
    assert job.error == "internal error: KeyError: 'missing'"
    assert _internal_errors() == before + 1
    crash = [r for r in caplog.records if r.name == "app.services.runner" and r.exc_info]
    assert crash and crash[0].exc_info is not None and crash[0].exc_info[0] is KeyError  # with its traceback
    assert b"siteloc_job_internal_errors_total" in generate_latest()  # exported on /metrics


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (InsufficientData("only 3 fingerprints heard any access point"), "only 3 fingerprints heard any access point"),
        (InvalidParams("k must be >= 1"), "k must be >= 1"),
        (JobFailed("the site has no active model any more"), "the site has no active model any more"),
        (NotFound("site 's9' not found"), "site 's9' not found"),
    ],
)
def test_named_data_and_domain_errors_become_the_plain_message(
    ctx: JobContext, monkeypatch: pytest.MonkeyPatch, exc: Exception, message: str
) -> None:
    def refuses(_ctx: JobContext, _job: Job, _progress: ProgressReporter) -> dict[str, Any]:
        raise exc

    before = _internal_errors()
    job = _run(ctx, monkeypatch, refuses)
    assert job.error == message
    assert _internal_errors() == before


def test_a_plain_value_error_from_ml_is_a_bug_not_a_user_message(
    ctx: JobContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unnamed(_ctx: JobContext, _job: Job, _progress: ProgressReporter) -> dict[str, Any]:
        raise ValueError("operands could not be broadcast together")

    before = _internal_errors()
    job = _run(ctx, monkeypatch, unnamed)
    assert job.error == "internal error: ValueError: operands could not be broadcast together"
    assert _internal_errors() == before + 1
