"""The co-training loop end to end through the API (tiny iToLoc): survey -> itoloc -> queries -> update."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from app.db import Database
from app.services.cotrain import schedule_due_updates
from ml.data.features import FingerprintSet
from tests.integration.conftest import ADMIN, Api
from tests.unit.test_itoloc import TINY, synthetic_site


def _api_rows(fs: FingerprintSet) -> list[dict[str, Any]]:
    rows = []
    for i in range(len(fs)):
        heard = np.flatnonzero(~np.isnan(fs.rss[i]))
        rows.append(
            {
                "wifi": [{"bssid": fs.aps[j], "rssi": round(float(fs.rss[i, j]), 1)} for j in heard],
                "x": float(fs.xy[i, 0]),
                "y": float(fs.xy[i, 1]),
                "floor": fs.floor[i],
                "building": fs.building[i],
                "device": fs.device[i],
                "timestamp": int(fs.timestamp[i]),
            }
        )
    return rows


@pytest.fixture(scope="module")
def itoloc_site(api: Api) -> tuple[str, list[dict[str, Any]]]:
    site = api.create_site("co-training")
    api.upload(site, _api_rows(synthetic_site(96, seed=0)))
    job = api.finetune(site, model="itoloc", params=TINY)
    assert job["state"] == "succeeded", job
    later = synthetic_site(96, seed=5)
    later.rss = later.rss - 8.0  # a new phone model, months later
    return site, _api_rows(later)


def _locate_all(api: Api, site: str, rows: list[dict[str, Any]]) -> None:
    queries = [{"site_id": site, "wifi": r["wifi"], "device": "new-phone"} for r in rows]
    r = api.post("/locate/batch", json={"queries": queries}, headers=ADMIN)
    assert r.status_code == 200, r.text


def test_cotrain_update_from_stored_queries(api: Api, itoloc_site: tuple[str, list[dict[str, Any]]]) -> None:
    site, later = itoloc_site
    r = api.post(f"/sites/{site}/cotrain", headers=ADMIN)
    assert r.status_code == 409 and "queries" in r.json()["detail"]  # nothing stored yet
    _locate_all(api, site, later[::2])
    r = api.post(f"/sites/{site}/cotrain", json={"params": {"max_rounds": 3, "bogus": 1}}, headers=ADMIN)
    assert r.status_code == 422 and "bogus" in r.json()["detail"]  # checked before a job is queued
    r = api.post(f"/sites/{site}/cotrain", json={"params": {"sigma": 2.0}}, headers=ADMIN)
    assert r.status_code == 422 and "sigma" in r.json()["detail"]
    r = api.post(f"/sites/{site}/cotrain", json={"params": {"max_rounds": 3, "epochs": 1}}, headers=ADMIN)
    assert r.status_code == 202, r.text
    job = api.wait_job(r.json()["job_id"])
    assert job["state"] == "succeeded", job
    result = job["result"]
    assert result["status"] in ("active", "rejected") and result["reason"]
    assert result["n_queries"] == len(later[::2])
    assert [rd["pool"] for rd in result["summary"]["rounds"]] == [60, 120, 192][: len(result["summary"]["rounds"])]
    versions = {v["version"]: v for v in api.get(f"/sites/{site}/models", headers=ADMIN).json()}
    new = versions[job["model_version"]]
    assert new["source"] == "cotrain" and new["parent_version"] == 1 and new["status"] == result["status"]
    assert new["training"]["holdout_before"]["n"] > 0 and "decision" in new["training"]
    if new["status"] == "active":
        assert new["training"]["holdout_after"]["mean_m"] <= new["training"]["holdout_before"]["mean_m"] * 1.02
    # Every query was used once: a second update has nothing new to learn from.
    r = api.post(f"/sites/{site}/cotrain", headers=ADMIN)
    assert r.status_code == 409


def test_guard_off_promotes_and_scheduler_starts_due_updates(
    api: Api, itoloc_site: tuple[str, list[dict[str, Any]]]
) -> None:
    site, later = itoloc_site
    _locate_all(api, site, later[1::2])
    settings = api.backend.settings(cotrain_min_new_queries=len(later[1::2]))
    db = Database(api.backend.database_url)
    try:
        with db.session() as s:
            created = schedule_due_updates(s, settings=settings)
        assert len(created) == 1  # this site is due; nothing else co-trains
        with db.session() as s:
            assert schedule_due_updates(s, settings=settings) == []  # one update per site at a time
    finally:
        db.dispose()
    api.app.state.runtime.dispatcher.enqueue(created[0])
    job = api.wait_job(created[0])
    assert job["state"] == "succeeded", job
    r = api.post(f"/sites/{site}/cotrain", json={"guard": False}, headers=ADMIN)
    assert r.status_code == 409  # queries all used by the scheduled update
    _locate_all(api, site, later[:80])
    r = api.post(
        f"/sites/{site}/cotrain", json={"guard": False, "params": {"max_rounds": 2, "epochs": 1}}, headers=ADMIN
    )
    assert r.status_code == 202
    job = api.wait_job(r.json()["job_id"])
    assert job["state"] == "succeeded" and job["result"]["status"] == "active", job
    assert "without the guard" in job["result"]["reason"]
    active = [v for v in api.get(f"/sites/{site}/models", headers=ADMIN).json() if v["status"] == "active"]
    assert [v["version"] for v in active] == [job["model_version"]]
