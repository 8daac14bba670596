"""Issue 19: no 500 for any input, no client can fail another's query, outages answer 503, crashed jobs recover.

Runs on the session's backend: SQLite (embedded) by default, PostgreSQL + Redis + a Celery worker in full mode,
so every storage case here is checked on both databases.
"""

from __future__ import annotations

import tarfile
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, make_url, select

from app.models import Job, Query
from tests.conftest import FIXTURES, Backend
from tests.integration.conftest import ADMIN, Api, uji_queries

JSON = {**ADMIN, "Content-Type": "application/json"}
ILC = FIXTURES / "ilc_site1_F1_small.tar.xz"
UJI = FIXTURES / "uji_train_small.csv"
JSONL = FIXTURES / "survey_small.jsonl"
BIG = 2**63


@pytest.fixture(scope="module")
def site(api: Api) -> str:
    return api.trained_site("faults")


def _scan() -> list[dict[str, Any]]:
    return list(uji_queries()[0]["wifi"])


def _locate(site_id: str, **extra: Any) -> dict[str, Any]:
    return {"site_id": site_id, "wifi": _scan(), **extra}


def _db(api: Api) -> Any:
    return api.app.state.runtime.db


def _n_queries(api: Api) -> int:
    with _db(api).session() as s:
        return int(s.scalar(select(func.count()).select_from(Query)) or 0)


def _assert_error_shape(r: Any, status: int, needle: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["detail"], str), body
    assert set(body) <= {"detail", "errors"}, body
    if needle is not None:
        assert needle in body["detail"] + str(body.get("errors", "")), body


# -- 1. NaN, Infinity, 1e309 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e309"])
def test_non_finite_numbers_are_422_everywhere(api: Api, site: str, value: str) -> None:
    bodies = {
        "/locate": f'{{"site_id":"{site}","wifi":[{{"bssid":"WAP001","rssi":{value}}}]}}',
        "/locate/batch": f'{{"queries":[{{"site_id":"{site}","wifi":[{{"bssid":"WAP001","rssi":{value}}}]}}]}}',
        f"/sites/{site}/finetune": f'{{"model":"wknn","train_fraction":{value}}}',
        "/sites": f'{{"name":"n","floors":[{value}]}}',
        f"/sites/{site}/surveys": f'{{"fingerprints":[{{"wifi":[],"x":{value},"y":0,"floor":"0"}}]}}',
    }
    for path, body in bodies.items():
        r = api.post(path, content=body.encode(), headers=JSON)
        _assert_error_shape(r, 422)
        assert r.json()["errors"], (path, r.text)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e309"])
def test_non_finite_numbers_in_params_are_422_naming_the_setting(api: Api, site: str, value: str) -> None:
    """`params` takes any JSON value, so the typed fields' check does not cover it; model_dump(mode="json") turned
    NaN into null and the settings check answered "must be float, not None"."""
    bodies = {
        f"/sites/{site}/cotrain": (f'{{"params":{{"max_label_error_m":{value}}}}}', "max_label_error_m"),
        f"/sites/{site}/finetune": (f'{{"model":"dnn","params":{{"lambdas":[1,{value},1,1]}}}}', "lambdas[1]"),
    }
    for path, (body, name) in bodies.items():
        r = api.post(path, content=body.encode(), headers=JSON)
        _assert_error_shape(r, 422, f"{name} must be a finite number")
        assert "None" not in r.json()["detail"], r.text


# -- 2. integers outside 64 bits --------------------------------------------------------------------------------


def test_integers_outside_64_bits_are_422(api: Api, site: str) -> None:
    before = _n_queries(api)
    _assert_error_shape(api.post(f"/sites/{site}/models/{BIG}/activate", headers=ADMIN), 422, "version")
    _assert_error_shape(api.post(f"/sites/{site}/models/0/activate", headers=ADMIN), 422, "version")
    _assert_error_shape(api.post("/locate", json=_locate(site, timestamp=BIG), headers=ADMIN), 422, "timestamp")
    wifi = [{**_scan()[0], "age_ms": BIG}]
    _assert_error_shape(api.post("/locate", json={"site_id": site, "wifi": wifi}, headers=ADMIN), 422, "age_ms")
    fp = {"wifi": _scan(), "x": 1.0, "y": 2.0, "floor": "0", "timestamp": BIG}
    _assert_error_shape(api.post(f"/sites/{site}/surveys", json={"fingerprints": [fp]}, headers=ADMIN), 422)
    assert _n_queries(api) == before


def _upload(api: Api, site_id: str, name: str, data: bytes, fmt: str) -> Any:
    return api.post(f"/sites/{site_id}/surveys", files={"file": (name, data)}, data={"format": fmt}, headers=ADMIN)


def _uji_with(column: str, value: str) -> bytes:
    lines = UJI.read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[3].split(",")
    cells[header.index(column)] = value
    return "\n".join([lines[0], lines[1], lines[2], ",".join(cells), *lines[4:]]).encode()


def _jsonl_with(**fields: Any) -> bytes:
    import json

    lines = JSONL.read_bytes().splitlines()
    obj = json.loads(lines[1])
    obj.update(fields)
    return b"\n".join([lines[0], json.dumps(obj).encode(), *lines[2:]])


def _trace_text() -> str:
    with tarfile.open(ILC) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("5dd9efa29191710006b5708a.txt"))
        f = tar.extractfile(member)
        assert f is not None
        return f.read().decode()


def _trace_wifi_time(value: str) -> bytes:
    lines = _trace_text().splitlines()
    i = next(i for i, line in enumerate(lines) if "\tTYPE_WIFI\t" in line)
    lines[i] = value + lines[i][lines[i].index("\t") :]
    return "\n".join(lines).encode()


def _trace_header(key: str, value: str) -> bytes:
    lines = _trace_text().splitlines()
    i = next(i for i, line in enumerate(lines) if line.startswith("#") and f"{key}:" in line)
    parts = lines[i].split("\t")
    lines[i] = "\t".join(f"{key}:{value}" if p.startswith(f"{key}:") else p for p in parts)
    return "\n".join(lines).encode()


# (file name, content, format, what the 422 must name). The same inputs on SQLite and PostgreSQL.
BAD_FILES = [
    ("ts.csv", lambda: _uji_with("TIMESTAMP", "1e25"), "ujiindoorloc", ["ts.csv line 4", "TIMESTAMP", "64 bits"]),
    ("t.txt", lambda: _trace_wifi_time("1" + "0" * 23), "ilc2020", ["t.txt line", "64 bits"]),
    ("ts.jsonl", lambda: _jsonl_with(timestamp=1e25), "jsonl", ["ts.jsonl line 2", "timestamp", "64 bits"]),
    ("f.jsonl", lambda: _jsonl_with(floor="f" * 10_000), "jsonl", ["f.jsonl line 2", "floor", "limit is 64"]),
    ("nul.jsonl", lambda: _jsonl_with(floor="a\u0000b"), "jsonl", ["nul.jsonl line 2", "floor", "NUL"]),
    ("d.jsonl", lambda: _jsonl_with(device="d" * 300), "jsonl", ["d.jsonl line 2", "device", "limit is 200"]),
    ("p.jsonl", lambda: _jsonl_with(path="p\u0000"), "jsonl", ["p.jsonl line 2", "path", "NUL"]),
    ("b.jsonl", lambda: _jsonl_with(building="b" * 65), "jsonl", ["b.jsonl line 2", "building"]),
    ("fl.txt", lambda: _trace_header("FloorName", "F" * 100), "ilc2020", ["fl.txt", "floor", "limit is 64"]),
]


@pytest.mark.parametrize(("name", "make", "fmt", "needles"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_file_fields_beyond_the_api_limits_are_422_and_keep_nothing(
    api: Api, name: str, make: Any, fmt: str, needles: list[str]
) -> None:
    site_id = api.create_site(f"limits {name}")
    r = _upload(api, site_id, name, make(), fmt)
    _assert_error_shape(r, 422)
    for needle in needles:
        assert needle in r.json()["detail"], r.json()["detail"]
    counts = api.get(f"/sites/{site_id}", headers=ADMIN).json()["counts"]
    assert counts == {"fingerprints": 0, "windows": 0, "queries": 0}


def test_json_survey_fields_beyond_the_limits_are_422(api: Api) -> None:
    site_id = api.create_site("json limits")
    base = {"wifi": _scan(), "x": 1.0, "y": 2.0, "floor": "0"}
    for bad in ({"floor": "a\u0000"}, {"device": "x\u0000y"}, {"path": "p" * 201}, {"building": "b" * 65}):
        r = api.post(f"/sites/{site_id}/surveys", json={"fingerprints": [{**base, **bad}]}, headers=ADMIN)
        _assert_error_shape(r, 422, next(iter(bad)))
    r = api.post("/sites", json={"name": "a\u0000b"}, headers=ADMIN)
    _assert_error_shape(r, 422, "NUL")


# -- 3. one client cannot fail another's query ------------------------------------------------------------------


def test_unstorable_locates_are_refused_and_never_fail_their_neighbours(api: Api, site: str) -> None:
    before = _n_queries(api)
    bad_bodies = [_locate(site, device="x\u0000y"), _locate(site, timestamp=BIG), _locate(site, device="d" * 201)]
    results: list[tuple[str, int]] = []
    lock = threading.Lock()

    def loop(kind: str, body: dict[str, Any]) -> None:
        for _ in range(15):
            r = api.post("/locate", json=body, headers=ADMIN)
            with lock:
                results.append((kind, r.status_code))

    threads = [threading.Thread(target=loop, args=("good", _locate(site, device=f"d{i}"))) for i in range(4)]
    threads += [threading.Thread(target=loop, args=("bad", b)) for b in bad_bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    good = [c for k, c in results if k == "good"]
    bad = [c for k, c in results if k == "bad"]
    assert good == [200] * len(good) and bad == [422] * len(bad)
    assert _n_queries(api) == before + len(good)


# -- 5./6. outages answer 503 with Retry-After; nothing orphaned ------------------------------------------------


DEAD_REDIS = "redis://127.0.0.1:9/0"  # discard port: nothing listens


def test_finetune_with_redis_down_is_503_and_leaves_no_job(
    api: Api, backend: Backend, site: str, tmp_path: Path
) -> None:
    settings = backend.settings(redis_url=DEAD_REDIS)
    if backend.database_url.startswith("sqlite"):
        # The embedded API of the other tests runs jobs that any process commits to its SQLite file (several
        # embedded API processes share one): give this full-mode app a copy, as a real deployment never mixes modes.
        import sqlite3

        src = sqlite3.connect(make_url(backend.database_url).database or "")
        copy = tmp_path / "copy.db"
        with sqlite3.connect(copy) as dst:
            src.backup(dst)
        src.close()
        settings = backend.settings(redis_url=DEAD_REDIS, database_url=f"sqlite:///{copy}")
    from app.main import create_app

    with TestClient(create_app(settings)) as client:
        db = client.app.state.runtime.db  # type: ignore[attr-defined]
        with db.session() as s:
            jobs_before = s.scalar(select(func.count()).select_from(Job))
        r = client.post(f"/sites/{site}/finetune", json={"model": "wknn"}, headers=ADMIN)
        _assert_error_shape(r, 503, "Redis")
        assert int(r.headers["Retry-After"]) >= 1
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(Job)) == jobs_before
        # /locate does not need Redis (the rate limiter falls back to this process's buckets)
        assert client.post("/locate", json=_locate(site), headers=ADMIN).status_code == 200
        assert client.get("/readyz").status_code == 503


def _dead_database_url(backend: Backend, tmp: Path) -> str:
    if backend.database_url.startswith("sqlite"):
        (tmp / "db-is-a-directory").mkdir()
        return f"sqlite:///{tmp / 'db-is-a-directory'}"
    return "postgresql+psycopg://postgres@127.0.0.1:9/siteloc?connect_timeout=2"


def test_database_down_is_503_naming_it_and_recovers(api: Api, backend: Backend, site: str) -> None:
    """The database becomes unreachable under a running service (its engine swapped for one pointing nowhere;
    the real outage, PostgreSQL stopped for 20 s, is scripts/fault_test.py), then comes back."""
    from sqlalchemy.orm import sessionmaker

    from app.db import make_engine
    from app.main import create_app

    key = api.post("/keys", json={"role": "app", "name": "db key"}, headers=ADMIN).json()["key"]
    with tempfile.TemporaryDirectory() as tmp, TestClient(create_app(backend.settings())) as client:
        db = client.app.state.runtime.db
        good_engine, good_maker = db.engine, db.sessionmaker
        dead = make_engine(_dead_database_url(backend, Path(tmp)))
        db.engine, db.sessionmaker = dead, sessionmaker(dead, expire_on_commit=False)
        try:
            checks = [
                client.get("/sites", headers=ADMIN),
                client.post("/sites", json={"name": "x"}, headers=ADMIN),
                client.post("/locate", json=_locate(site), headers={"Authorization": f"Bearer {key}"}),
                client.post(f"/sites/{site}/finetune", json={"model": "wknn"}, headers=ADMIN),
                client.post(
                    f"/sites/{site}/surveys",
                    json={"fingerprints": [{"wifi": _scan(), "x": 0, "y": 0, "floor": 0}]},
                    headers=ADMIN,
                ),
            ]
            for r in checks:
                _assert_error_shape(r, 503, "database")
                assert int(r.headers["Retry-After"]) >= 1
        finally:
            db.engine, db.sessionmaker = good_engine, good_maker
            dead.dispose()
        assert client.get("/sites", headers=ADMIN).status_code == 200
        assert client.post("/locate", json=_locate(site), headers={"Authorization": f"Bearer {key}"}).status_code == 200


# -- 7. heartbeat and sweeper -----------------------------------------------------------------------------------


def _job(api: Api, site_id: str, *, state: str, age_s: float, attempts: int) -> str:
    from app.services.ids import new_id

    job_id = new_id()
    with _db(api).session() as s:
        s.add(
            Job(
                id=job_id,
                kind="finetune",
                site_id=site_id,
                state=state,
                progress=0.3,
                message="x",
                params={"model": "wknn"},
                attempts=attempts,
                heartbeat_at=datetime.now(UTC) - timedelta(seconds=age_s),
            )
        )
    return job_id


def test_sweeper_requeues_dead_jobs_fails_hopeless_ones_and_leaves_live_ones(api: Api, site: str) -> None:
    from app.services.jobs import claim_job, sweep_jobs

    settings = api.app.state.runtime.settings.model_copy(update={"job_stale_seconds": 60.0, "job_max_attempts": 2})
    dead = _job(api, site, state="running", age_s=600, attempts=1)
    hopeless = _job(api, site, state="running", age_s=600, attempts=2)
    live = _job(api, site, state="running", age_s=5, attempts=1)
    lost = _job(api, site, state="queued", age_s=600, attempts=0)
    with _db(api).session() as s:
        sweep = sweep_jobs(s, settings=settings)
    assert dead in sweep.requeued and lost in sweep.resent and hopeless in sweep.failed
    assert live not in sweep.to_send + sweep.failed
    with _db(api).session() as s:
        assert s.get(Job, dead).state == "queued"
        assert s.get(Job, live).state == "running"
        failed = s.get(Job, hopeless)
        assert failed.state == "failed" and "stopped 2 times" in failed.error
    with _db(api).session() as s:  # a second sweep right after finds nothing new: idempotent
        again = sweep_jobs(s, settings=settings)
    assert not set(again.to_send + again.failed) & {dead, hopeless, lost, live}
    with _db(api).session() as s:  # a live worker's job cannot be claimed by a duplicate delivery
        assert claim_job(s, job_id=live, stale_s=60.0) is False
        assert claim_job(s, job_id=dead, stale_s=60.0) is True
        assert claim_job(s, job_id=dead, stale_s=60.0) is False
    with _db(api).session() as s:
        for j in (dead, hopeless, live, lost):
            s.delete(s.get(Job, j))


def test_requeued_job_runs_once_and_publishes_one_version(api: Api, site: str) -> None:
    """A job whose worker 'died' (stale heartbeat) is requeued by the sweeper and then produces one version."""
    from app.services.jobs import sweep_jobs

    before = api.get(f"/sites/{site}/models", headers=ADMIN).json()
    job_id = _job(api, site, state="running", age_s=3600, attempts=1)
    settings = api.app.state.runtime.settings
    with _db(api).session() as s:
        sweep = sweep_jobs(s, settings=settings)
    assert job_id in sweep.requeued
    for _ in range(2):  # the sweeper's send and a late redelivery of the original message
        api.app.state.runtime.dispatcher.enqueue(job_id)
    job = api.wait_job(job_id)
    assert job["state"] == "succeeded", job
    after = api.get(f"/sites/{site}/models", headers=ADMIN).json()
    assert len(after) == len(before) + 1


# -- 8. finetune params checked before queueing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"model": "wknn", "params": {"bogus": 1}}, "bogus"),
        ({"model": "wknn", "params": {"k": -5}}, "k"),
        ({"model": "wknn", "params": {"k": True}}, "k"),
        ({"model": "dnn", "params": {"bogus": 1}}, "bogus"),
        ({"model": "dnn", "params": {"epochs": "3"}}, "epochs"),
        ({"model": "cnnloc", "params": {"lr": -1}}, "lr"),
        ({"model": "itoloc", "params": {"n_aps": 1}}, "n_aps"),
        ({"model": "itoloc", "params": {"bogus": 1}}, "bogus"),
        ({"model": "wknn", "seed": False}, "seed"),
        ({"model": "wknn", "train_fraction": 5e-324}, "train_fraction"),
        ({"model": "wknn", "params": {"holdout_fraction": True}}, "holdout_fraction"),
    ],
)
def test_finetune_params_are_checked_before_queueing(api: Api, site: str, body: dict[str, Any], needle: str) -> None:
    with _db(api).session() as s:
        jobs_before = s.scalar(select(func.count()).select_from(Job))
    r = api.post(f"/sites/{site}/finetune", json=body, headers=ADMIN)
    _assert_error_shape(r, 422, needle)
    with _db(api).session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == jobs_before


# -- 9. per-route body limits -----------------------------------------------------------------------------------


def test_a_huge_locate_is_refused_before_parsing(api: Api, site: str) -> None:
    limit = api.app.state.runtime.settings.max_locate_body_bytes
    wifi = ",".join(f'{{"bssid":"WAP{i % 520:03d}","rssi":-50}}' for i in range(limit // 20))
    body = f'{{"site_id":"{site}","wifi":[{wifi}]}}'.encode()
    assert len(body) > limit
    r = api.post("/locate", content=body, headers=JSON)
    _assert_error_shape(r, 413, str(limit))
    # a batch still takes the general limit
    r = api.post("/locate/batch", json={"queries": [_locate(site)] * 5}, headers=ADMIN)
    assert r.status_code == 200, r.text


# -- 10. rate limits --------------------------------------------------------------------------------------------


def test_rate_limits_per_key_and_per_address_for_failed_auth(api: Api, backend: Backend, site: str) -> None:
    from app.main import create_app

    key = api.post("/keys", json={"role": "app", "name": "limited"}, headers=ADMIN).json()["key"]
    app_key = {"Authorization": f"Bearer {key}"}
    settings = backend.settings(
        rate_limit_app_per_s=0.01,
        rate_limit_app_burst=3,
        rate_limit_auth_failures_per_s=0.01,
        rate_limit_auth_failures_burst=2,
    )
    # Two API processes' worth of apps: in full mode they share the buckets through Redis.
    with TestClient(create_app(settings)) as a, TestClient(create_app(settings)) as b:
        codes = [c.post("/locate", json=_locate(site), headers=app_key).status_code for c in (a, b, a, b)]
        if backend.redis_url:  # one bucket of 3 for both processes
            assert codes == [200, 200, 200, 429]
        else:  # a bucket of 3 in each process
            assert codes == [200, 200, 200, 200]
            assert a.post("/locate", json=_locate(site), headers=app_key).status_code == 200
        r = a.post("/locate", json=_locate(site), headers=app_key)
        _assert_error_shape(r, 429, "rate limit")
        assert int(r.headers["Retry-After"]) >= 1
        wrong = {"Authorization": "Bearer sl_wrong"}
        codes = [a.post("/locate", json=_locate(site), headers=wrong).status_code for _ in range(3)]
        assert codes == [401, 401, 429]
        metrics = a.get("/metrics").text
        assert 'siteloc_rate_limited_total{limit="app"}' in metrics
        assert 'siteloc_rate_limited_total{limit="auth_failures"}' in metrics


# -- 11. the OpenAPI spec matches the answers -------------------------------------------------------------------


def test_openapi_documents_errors_in_one_shape_and_answers_follow_it(api: Api, site: str) -> None:
    spec = api.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if path in ("/healthz", "/readyz", "/metrics"):
                continue
            for code in ("400", "401", "403", "404", "409", "413", "422", "429", "503"):
                ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorOut"), (method, path, code)
    assert "floors" not in spec["components"]["schemas"]["SiteOut"].get("required", [])
    # the service's own 422 and FastAPI's validation 422 have the same shape
    _assert_error_shape(api.post("/locate", json={"site_id": site, "wifi": []}, headers=ADMIN), 422)
    _assert_error_shape(api.post("/locate", json={"wifi": "x"}, headers=ADMIN), 422)
    # timestamps carry a timezone in both modes
    created = api.post("/sites", json={"name": "tz"}, headers=ADMIN)
    assert created.status_code == 201 and created.json()["created_at"].endswith(("Z", "+00:00"))
    assert "floors" not in created.json()
    for row in api.get(f"/sites/{site}/models", headers=ADMIN).json():
        assert row["created_at"].endswith(("Z", "+00:00"))
