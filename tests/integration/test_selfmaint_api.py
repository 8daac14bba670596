"""Self-maintenance through the API (both modes): a wknn site learns from its tracking sessions; the guard rejects a
harmful update; the scheduler starts an update once enough session minutes have accrued; walks are the keys'
sessions; one update per site, also under concurrent requests; update settings arrive as JSON numbers."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, update

from app.db import Database
from app.errors import Conflict
from app.models import Job, Query, Site
from app.services.cotrain import _load_queries, request_cotrain, schedule_due_updates, unused_session_minutes
from ml.data.jsonl import fingerprint_to_json
from tests import synthetic_walks as sw
from tests.integration.conftest import ADMIN, Api


def _sensors(s: Any) -> dict[str, Any]:
    return {"rate_hz": s.rate_hz, "accel": s.accel.round(3).tolist(), "rotation": s.rotation.round(5).tolist()}


def _walk_queries(site: str, walk: list[sw.WalkSample], sid: str) -> list[dict[str, Any]]:
    out = []
    for s in walk:
        q: dict[str, Any] = {"site_id": site, "session_id": sid, "timestamp": s.t_ms, "device": "phone-b"}
        if s.wifi:
            q["wifi"] = [{"bssid": r.bssid, "rssi": r.rssi} for r in s.wifi]
        if s.sensors is not None:
            q["sensors"] = _sensors(s.sensors)
        out.append(q)
    return out


def _site(api: Api, name: str, world: sw.World) -> str:
    site = api.create_site(name)
    api.upload(site, [fingerprint_to_json(fp) for fp in sw.survey(world)])
    r = api.put(f"/sites/{site}/floors/0/plan", json=sw.PLAN, headers=ADMIN)
    assert r.status_code == 200, r.text
    job = api.finetune(site)
    assert job["state"] == "succeeded", job
    return site


def _replay(api: Api, site: str, walks: list[list[sw.WalkSample]], tag: str) -> None:
    for i, w in enumerate(walks):
        r = api.post("/locate/batch", json={"queries": _walk_queries(site, w, f"{tag}-{site[:8]}-{i}")}, headers=ADMIN)
        assert r.status_code == 200, r.text


def _wait_serving(api: Api, site: str, version: int, fp: Any, timeout: float = 30.0) -> None:
    """A promotion by a job reaches this process's model cache through the notifier (a poll in embedded mode):
    ask until the answers come from `version`."""
    q = {"site_id": site, "wifi": [{"bssid": r.bssid, "rssi": r.rssi} for r in fp.wifi]}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if api.post("/locate", json=q, headers=ADMIN).json()["model"]["version"] == version:
            return
        time.sleep(0.2)
    raise AssertionError(f"site {site} still not answering with version {version} after {timeout} s")


def _east_error(api: Api, site: str, east: list[Any]) -> float:
    queries = [{"site_id": site, "wifi": [{"bssid": r.bssid, "rssi": r.rssi} for r in fp.wifi]} for fp in east]
    r = api.post("/locate/batch", json={"queries": queries}, headers=ADMIN)
    assert r.status_code == 200, r.text
    out = r.json()["results"]
    return float(np.mean([np.hypot(o["x"] - fp.x, o["y"] - fp.y) for o, fp in zip(out, east, strict=True)]))


@pytest.fixture(scope="module")
def world() -> sw.World:
    return sw.world(0)


def test_a_wknn_site_learns_from_its_sessions(api: Api, world: sw.World) -> None:
    site = _site(api, "self-maintained", world)
    east = sw.scored(world, n=80, seed=7, x_min=60.0)
    _replay(api, site, sw.walks(world, 16), "walk")
    r = api.post(f"/sites/{site}/cotrain", headers=ADMIN)
    assert r.status_code == 202, r.text
    job = api.wait_job(r.json()["job_id"])
    assert job["state"] == "succeeded", job
    res = job["result"]
    assert res["status"] == "active", {k: v for k, v in res.items() if k != "holdout_after"}
    assert res["n_sessions_learned"] == 12 and res["n_sessions_guard"] == 4 and res["n_pseudo_labels"] > 50
    assert res["traffic_before"]["walks"] == 4 and res["traffic_after"]["mean_m"] is not None
    assert "recent traffic" in res["reason"] and "holdout" in res["reason"]
    assert res["traffic_before"]["n"] >= 20 and "not judged" not in res["reason"]  # the score decided
    versions = {v["version"]: v for v in api.get(f"/sites/{site}/models", headers=ADMIN).json()}
    new = versions[job["model_version"]]
    assert new["source"] == "cotrain" and new["parent_version"] == 1 and new["status"] == "active"
    t = new["training"]
    assert (
        t["n_sessions_learned"] == 12 and t["session_minutes"] > 10 and t["n_pseudo_labels"] == res["n_pseudo_labels"]
    )
    assert t["traffic_before"] == res["traffic_before"] and t["holdout_before"]["n"] > 0
    # the served map is better in the sparsely surveyed half than the version it replaced
    _wait_serving(api, site, job["model_version"], east[0])
    after = _east_error(api, site, east)
    r = api.post(f"/sites/{site}/models/1/activate", headers=ADMIN)
    assert r.status_code == 200
    _wait_serving(api, site, 1, east[0])
    before = _east_error(api, site, east)
    assert after < 0.9 * before, (before, after)
    # the learned walks were used once; the 4 guard walks stay for the next update
    db = Database(api.backend.database_url)
    try:
        with db.session() as s:
            assert 3.0 < unused_session_minutes(s, site_id=site) < 5.0
    finally:
        db.dispose()


def test_the_guard_rejects_noisy_pseudo_labels(api: Api, world: sw.World) -> None:
    site = _site(api, "harmful update", world)
    _replay(api, site, sw.walks(world, 16), "walk")
    r = api.post(f"/sites/{site}/cotrain", json={"params": {"label_noise_m": 40.0}}, headers=ADMIN)
    assert r.status_code == 202, r.text
    job = api.wait_job(r.json()["job_id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["status"] == "rejected" and job["result"]["reason"].startswith("rejected"), job["result"]
    active = [v["version"] for v in api.get(f"/sites/{site}/models", headers=ADMIN).json() if v["status"] == "active"]
    assert active == [1]


def test_the_scheduler_counts_session_minutes(api: Api, world: sw.World) -> None:
    site = _site(api, "scheduled", world)
    _replay(api, site, sw.walks(world, 6, seed=5), "walk")  # 6 walks of 59 s; other sites here hold < 4 min
    db = Database(api.backend.database_url)
    try:
        with db.session() as s:
            assert unused_session_minutes(s, site_id=site) == pytest.approx(6 * 59 / 60)
            assert schedule_due_updates(s, settings=api.backend.settings(cotrain_min_session_minutes=7.0)) == []
        with db.session() as s:
            created = schedule_due_updates(s, settings=api.backend.settings(cotrain_min_session_minutes=5.0))
        assert len(created) == 1
    finally:
        db.dispose()
    api.app.state.runtime.dispatcher.enqueue(created[0])
    job = api.wait_job(created[0])
    assert job["state"] == "succeeded" and job["site_id"] == site, job
    assert job["result"]["n_sessions_learned"] == 4 and job["result"]["n_sessions_guard"] == 2


def test_an_update_with_nothing_to_learn_says_so_and_uses_up_its_queries(api: Api, world: sw.World) -> None:
    site = _site(api, "too short", world)
    _replay(api, site, [sw.walk(world, 10.0, 10.0, 3, 1_700_000_000_000)], "short")  # 3 queries: too short a walk
    r = api.post(f"/sites/{site}/cotrain", headers=ADMIN)
    assert r.status_code == 202, r.text
    job = api.wait_job(r.json()["job_id"])
    assert job["state"] == "succeeded" and job["model_version"] is None, job
    assert job["result"]["status"] == "skipped" and "nothing to learn" in job["result"]["reason"]
    assert [v["version"] for v in api.get(f"/sites/{site}/models", headers=ADMIN).json()] == [1]
    r = api.post(f"/sites/{site}/cotrain", headers=ADMIN)
    assert r.status_code == 409  # those queries were looked at: the scheduler does not retry them forever


def test_a_session_id_reused_days_apart_counts_its_queries_not_the_days(api: Api, world: sw.World) -> None:
    site = _site(api, "reused session id", world)
    t0 = 1_700_000_000_000
    for day in range(2):  # the same session id, a 10-query walk each day
        walk = sw.walk(world, 10.0, 10.0, 10, t0 + day * 86_400_000)
        r = api.post("/locate/batch", json={"queries": _walk_queries(site, walk, "daily")}, headers=ADMIN)
        assert r.status_code == 200, r.text
    db = Database(api.backend.database_url)
    try:
        with db.session() as s:
            assert unused_session_minutes(s, site_id=site) <= 20 * 10 / 60  # not a day
    finally:
        db.dispose()


# -- walks are the key's (issue: two apps' walks with the same session ids were merged) ---------------------------


def _app_key(api: Api, site: str, name: str) -> tuple[str, dict[str, str]]:
    r = api.post("/keys", json={"role": "app", "sites": [site], "name": name}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return r.json()["id"], {"Authorization": f"Bearer {r.json()['key']}"}


def test_two_apps_using_the_same_session_ids_are_four_walks(api: Api, world: sw.World) -> None:
    """Keys A and B each send walks "walk-1" and "walk-2" (60 queries, 59 s, the same timestamps): four live
    sessions, so four walks of ~4 minutes, not two interleaved ones."""
    site = _site(api, "two apps", world)
    t0 = 1_700_000_000_000
    keys = {}
    for k, name in enumerate(("app-a", "app-b")):
        key_id, headers = _app_key(api, site, name)
        keys[key_id] = name
        for i in (1, 2):
            walk = sw.walk(world, 5.0 + 10 * k, 4.0 + 6 * i, 60, t0 + i * 120_000)
            r = api.post("/locate/batch", json={"queries": _walk_queries(site, walk, f"walk-{i}")}, headers=headers)
            assert r.status_code == 200, r.text
    db = Database(api.backend.database_url)
    try:
        with db.session() as s:
            assert unused_session_minutes(s, site_id=site) == pytest.approx(4 * 59 / 60)  # was 2 x 59 / 60
        r = api.post(f"/sites/{site}/cotrain", json={"guard": False, "params": {"guard_fraction": 0}}, headers=ADMIN)
        assert r.status_code == 202, r.text
        job = api.wait_job(r.json()["job_id"])
        assert job["state"] == "succeeded", job
        res = job["result"]
        assert res["n_sessions"] == 4 and res["n_sessions_learned"] == 4, res  # was 2
        assert res["session_minutes"] == pytest.approx(4 * 59 / 60, abs=0.01)  # was 1.97
        with db.session() as s:  # the query log knows which key sent each query
            by_key = Counter(s.execute(select(Query.key_id).where(Query.site_id == site)).scalars())
            assert by_key == {key_id: 120 for key_id in keys}
    finally:
        db.dispose()


def test_rows_without_a_key_still_group_by_session_id(api: Api, world: sw.World) -> None:
    """Query-log rows stored before the key was recorded (key_id NULL) form walks by session id, as before."""
    site = _site(api, "old rows", world)
    walk = sw.walk(world, 10.0, 10.0, 20, 1_700_000_000_000)
    r = api.post("/locate/batch", json={"queries": _walk_queries(site, walk, "old-walk")}, headers=ADMIN)
    assert r.status_code == 200, r.text
    db = Database(api.backend.database_url)
    try:
        with db.session() as s:
            s.execute(update(Query).where(Query.site_id == site).values(key_id=None))
        with db.session() as s:
            assert unused_session_minutes(s, site_id=site) == pytest.approx(19 / 60)
            pool = _load_queries(s, site, 10_000, 600.0)
            assert [(w.key, len(w.ids)) for w in pool.walks] == [("old-walk", 20)]
    finally:
        db.dispose()


# -- one update per site, also under concurrent requests --------------------------------------------------------


def _pending_updates(api: Api, site: str) -> list[str]:
    db = Database(api.backend.database_url)
    try:
        with db.session() as s:
            pending = Job.state.in_(("queued", "running"))
            return list(s.scalars(select(Job.id).where(Job.site_id == site, Job.kind == "cotrain", pending)))
    finally:
        db.dispose()


def test_concurrent_update_requests_start_exactly_one(api: Api, world: sw.World) -> None:
    """8 threads POST /sites/{id}/cotrain at once: one 202, seven 409 (each request checked for a pending job,
    then created one, with nothing in between: two or three of them got 202 and both versions were promoted)."""
    site = _site(api, "concurrent updates", world)
    _replay(api, site, sw.walks(world, 4, seed=3), "walk")
    n = 8
    barrier = threading.Barrier(n)
    answers: list[Any] = [None] * n

    def post(i: int) -> None:
        barrier.wait()
        answers[i] = api.post(f"/sites/{site}/cotrain", json={"guard": False}, headers=ADMIN)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    codes = sorted(r.status_code for r in answers)
    assert codes == [202] + [409] * (n - 1), [r.text for r in answers]
    job_id = next(r.json()["job_id"] for r in answers if r.status_code == 202)
    assert all(job_id in r.json()["detail"] for r in answers if r.status_code == 409)
    job = api.wait_job(job_id)
    assert job["state"] == "succeeded", job
    cotrained = [v for v in api.get(f"/sites/{site}/models", headers=ADMIN).json() if v["source"] == "cotrain"]
    assert len(cotrained) == 1


def test_the_database_keeps_one_pending_update_per_site(api: Api, world: sw.World) -> None:
    """The race made certain: request A has created its job but not committed when request B checks for a pending
    one (and sees none); B's insert must still lose, with the same 409, on SQLite and PostgreSQL alike."""
    site = _site(api, "one pending update", world)
    _replay(api, site, sw.walks(world, 2, seed=4), "walk")
    db = Database(api.backend.database_url)
    outcome: list[Any] = []

    def request_b() -> None:
        with db.sessionmaker() as s:
            try:
                job = request_cotrain(s, site=s.get(Site, site), params={"guard": False})
                s.commit()
                outcome.append(job.id)
            except Conflict as exc:
                outcome.append(exc)

    try:
        with db.sessionmaker() as a:
            job_a = request_cotrain(a, site=a.get(Site, site), params={"guard": False})  # inserted, not committed
            b = threading.Thread(target=request_b)
            b.start()
            b.join(timeout=1.0)  # without the unique index, B has created a second job by now
            a.commit()
        b.join(timeout=60)
        assert len(outcome) == 1 and isinstance(outcome[0], Conflict), outcome
        assert job_a.id in str(outcome[0])
        assert _pending_updates(api, site) == [job_a.id]
    finally:
        db.dispose()
    api.app.state.runtime.dispatcher.enqueue(job_a.id)
    assert api.wait_job(job_a.id)["state"] == "succeeded"


# -- settings arrive as JSON numbers ------------------------------------------------------------------------------


def test_integer_settings_sent_as_floats_are_taken_as_ints(api: Api, world: sw.World) -> None:
    """{"particles": 10.0} passed the check, then failed the job ("'float' object cannot be interpreted as an
    integer"); wknn's {"k": 5.0} failed its finetune the same way. A job never fails on params its request passed."""
    site = api.create_site("float ints")
    api.upload(site, [fingerprint_to_json(fp) for fp in sw.survey(world)])
    assert api.put(f"/sites/{site}/floors/0/plan", json=sw.PLAN, headers=ADMIN).status_code == 200
    job = api.finetune(site, params={"k": 5.0, "max_tune_queries": 50.0})
    assert job["state"] == "succeeded", job
    _replay(api, site, sw.walks(world, 4, seed=6), "walk")
    r = api.post(f"/sites/{site}/cotrain", json={"params": {"particles": 10.5}}, headers=ADMIN)
    assert r.status_code == 422 and "particles must be int, not 10.5" in r.text, r.text
    ints = {"particles": 50.0, "rounds": 1.0, "min_walk_queries": 5.0, "max_guard_walks": 1.0}
    r = api.post(f"/sites/{site}/cotrain", json={"guard": False, "params": ints}, headers=ADMIN)
    assert r.status_code == 202, r.text
    job = api.wait_job(r.json()["job_id"])
    assert job["state"] == "succeeded", job
    assert job["result"]["n_sessions_learned"] == 3 and job["result"]["n_sessions_guard"] == 1
    training = next(v for v in api.get(f"/sites/{site}/models", headers=ADMIN).json() if v["source"] == "cotrain")[
        "training"
    ]
    assert training["params"] == {k: int(v) for k, v in ints.items()}
    assert all(type(training["params"][k]) is int for k in ints)
