"""The operator/app flow through HTTP only: site, survey, finetune, job, models, activate, locate."""

from __future__ import annotations

import math
import os

import numpy as np
from sqlalchemy import create_engine, select

from app.models import Query
from tests.integration.conftest import ADMIN, Api, uji_queries, uji_survey


def _parent_pid(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("PPid:"))


def test_full_flow_with_documented_status_codes(api: Api) -> None:
    r = api.post("/sites", json={"name": "UJI campus", "floors": [0, 1, 2, 3, 4]}, headers=ADMIN)
    assert r.status_code == 201
    site = r.json()
    assert site["name"] == "UJI campus" and site["floors"] == ["0", "1", "2", "3", "4"]
    site_id = site["id"]

    survey = uji_survey()
    r = api.post(f"/sites/{site_id}/surveys", json={"fingerprints": survey}, headers=ADMIN)
    assert r.status_code == 201, r.text
    assert r.json()["fingerprints"] == len(survey)

    r = api.post(f"/sites/{site_id}/finetune", json={"model": "wknn", "seed": 0}, headers=ADMIN)
    assert r.status_code == 202
    job = api.wait_job(r.json()["job_id"])
    assert job["state"] == "succeeded", job
    assert job["progress"] == 1.0 and job["model_version"] == 1 and job["kind"] == "finetune"
    assert job["metrics"]["mean_m"] is not None and job["metrics"]["n"] > 0
    if api.backend.mode == "full":
        # Trained by the Celery worker subprocess, not by this test process.
        pid = int(job["result"]["worker"].rsplit("/", 1)[1])
        assert pid != os.getpid()
        assert pid == api.backend.worker.pid or _parent_pid(pid) == api.backend.worker.pid  # type: ignore[union-attr]

    r = api.get(f"/sites/{site_id}/models", headers=ADMIN)
    assert r.status_code == 200
    (v1,) = r.json()
    assert v1["version"] == 1 and v1["model"] == "wknn" and v1["status"] == "active" and v1["source"] == "finetune"
    assert set(v1["metrics"]) >= {"mean_m", "median_m", "p95_m", "floor_hit"}

    r = api.post(f"/sites/{site_id}/models/1/activate", headers=ADMIN)
    assert r.status_code == 200 and r.json()["status"] == "active"

    errors = []
    for q in uji_queries():
        r = api.post("/locate", json={"site_id": site_id, "wifi": q["wifi"]}, headers=ADMIN)
        assert r.status_code == 200, r.text
        ans = r.json()
        assert ans["site_id"] == site_id and ans["model"] == {"name": "wknn", "version": 1}
        assert ans["error_m"] > 0 and ans["query_id"]
        errors.append(math.hypot(ans["x"] - q["x"], ans["y"] - q["y"]))
    # A broken model (random or constant answers) is off by tens to hundreds of metres on this campus.
    assert np.median(errors) < 25, np.median(errors)

    r = api.get(f"/sites/{site_id}", headers=ADMIN)
    counts = r.json()["counts"]
    assert counts["fingerprints"] == len(survey) and counts["queries"] == len(errors)
    assert r.json()["active_model"] == {"name": "wknn", "version": 1}


def test_locate_answer_is_stored_before_it_is_returned(api: Api) -> None:
    site_id = api.trained_site("durable")
    q = uji_queries()[0]
    r = api.post(
        "/locate", json={"site_id": site_id, "wifi": q["wifi"], "device": "pixel-7", "timestamp": 17}, headers=ADMIN
    )
    assert r.status_code == 200
    ans = r.json()
    # Read back through a separate connection: the row is committed, not just queued.
    engine = create_engine(api.backend.database_url)
    with engine.connect() as c:
        row = c.execute(select(Query).where(Query.id == ans["query_id"])).one()
    engine.dispose()
    assert row.site_id == site_id and row.device == "pixel-7" and row.client_timestamp == 17
    assert row.model_version == 1 and abs(row.x - ans["x"]) < 1e-6 and len(row.wifi) == len(q["wifi"])


def test_batch_locate_in_order_and_site_detection(api: Api) -> None:
    site_a = api.create_site("building 0")
    api.upload(site_a, uji_survey("0"))
    site_b = api.create_site("building 2")
    api.upload(site_b, uji_survey("2"))
    assert api.finetune(site_a)["state"] == "succeeded"
    assert api.finetune(site_b)["state"] == "succeeded"

    # Other tests' sites hold the same campus APs; a key scoped to these two sites sees only them.
    key = api.post("/keys", json={"role": "app", "sites": [site_a, site_b]}, headers=ADMIN).json()["key"]
    qa, qb = uji_queries("0")[:3], uji_queries("2")[:3]
    queries = [{"wifi": q["wifi"]} for q in qa + qb]  # no site_id: detected from the scan
    r = api.post("/locate/batch", json={"queries": queries}, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["site_id"] for x in results] == [site_a] * 3 + [site_b] * 3
    assert len({x["query_id"] for x in results}) == 6


def test_new_version_is_candidate_and_activation_switches_locate(api: Api) -> None:
    site_id = api.trained_site("versions")
    job = api.finetune(site_id, params={"k": 1})
    assert job["state"] == "succeeded" and job["model_version"] == 2
    versions = {v["version"]: v["status"] for v in api.get(f"/sites/{site_id}/models", headers=ADMIN).json()}
    assert versions == {1: "active", 2: "candidate"}

    q = {"site_id": site_id, "wifi": uji_queries()[0]["wifi"]}
    assert api.post("/locate", json=q, headers=ADMIN).json()["model"]["version"] == 1
    assert api.post(f"/sites/{site_id}/models/2/activate", headers=ADMIN).status_code == 200
    assert api.post("/locate", json=q, headers=ADMIN).json()["model"]["version"] == 2
    versions = {v["version"]: v["status"] for v in api.get(f"/sites/{site_id}/models", headers=ADMIN).json()}
    assert versions == {1: "retired", 2: "active"}
    # Rollback.
    assert api.post(f"/sites/{site_id}/models/1/activate", headers=ADMIN).status_code == 200
    assert api.post("/locate", json=q, headers=ADMIN).json()["model"]["version"] == 1
    assert api.post(f"/sites/{site_id}/models/9/activate", headers=ADMIN).status_code == 404
