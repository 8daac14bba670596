"""Bad input gets a clear 4xx naming the problem; never a 500; nothing partial is stored."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import ADMIN, Api, uji_queries, uji_survey


@pytest.fixture(scope="module")
def site(api: Api) -> str:
    return api.trained_site("bad input")


def _counts(api: Api, site_id: str) -> dict[str, Any]:
    return dict(api.get(f"/sites/{site_id}", headers=ADMIN).json()["counts"])


def _scan() -> list[dict[str, Any]]:
    return list(uji_queries()[0]["wifi"])


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ({"bssid": "WAP001", "rssi": 5}, "rssi"),
        ({"bssid": "WAP001", "rssi": -200}, "rssi"),
        ({"bssid": "WAP001", "rssi": "strong"}, "rssi"),
        ({"bssid": "", "rssi": -50}, "bssid"),
        ({"bssid": "x" * 65, "rssi": -50}, "bssid"),
        ({"bssid": "caf\u00e9", "rssi": -50}, "bssid"),
        ({"rssi": -50}, "bssid"),
    ],
)
def test_bad_wifi_entries_are_422(api: Api, site: str, entry: dict[str, Any], needle: str) -> None:
    r = api.post("/locate", json={"site_id": site, "wifi": [entry]}, headers=ADMIN)
    assert r.status_code == 422, r.text
    assert needle in str(r.json()["detail"])


def test_bssid_spellings_are_normalised(api: Api) -> None:
    site_id = api.create_site("macs")
    fps = [
        {
            "wifi": [
                {"bssid": "AA-BB-CC-DD-EE-0" + str(i % 4), "rssi": -40 - i},
                {"bssid": "aabb.ccdd.ee10", "rssi": -60},
            ],
            "x": float(i),
            "y": 0.0,
            "floor": 1,
            "path": f"p{i // 5}",
        }
        for i in range(20)
    ]
    api.upload(site_id, fps)
    assert api.finetune(site_id)["state"] == "succeeded"
    for spelling in ("aa:bb:cc:dd:ee:01", "AA:BB:CC:DD:EE:01", "aabbccddee01", "aabb.ccdd.ee01"):
        r = api.post("/locate", json={"site_id": site_id, "wifi": [{"bssid": spelling, "rssi": -41}]}, headers=ADMIN)
        assert r.status_code == 200, (spelling, r.text)
        assert r.json()["floor"] == "1"


def test_unknown_site_is_404_and_unknown_aps_422(api: Api, site: str) -> None:
    r = api.post("/locate", json={"site_id": "nope", "wifi": _scan()}, headers=ADMIN)
    assert r.status_code == 404 and "nope" in r.json()["detail"]
    assert api.get("/sites/nope", headers=ADMIN).status_code == 404
    assert api.get("/jobs/nope", headers=ADMIN).status_code == 404
    assert api.post("/sites/nope/finetune", json={"model": "wknn"}, headers=ADMIN).status_code == 404
    alien = [{"bssid": "de:ad:be:ef:00:01", "rssi": -50}]
    r = api.post("/locate", json={"site_id": site, "wifi": alien}, headers=ADMIN)
    assert r.status_code == 422 and "known" in r.json()["detail"]
    r = api.post("/locate", json={"wifi": alien}, headers=ADMIN)
    assert r.status_code == 422 and "site" in r.json()["detail"]
    r = api.post("/locate", json={"site_id": site, "wifi": []}, headers=ADMIN)
    assert r.status_code == 422


def test_site_without_model_is_409(api: Api) -> None:
    site_id = api.create_site("untrained")
    r = api.post("/locate", json={"site_id": site_id, "wifi": _scan()}, headers=ADMIN)
    assert r.status_code == 409 and "finetune" in r.json()["detail"]
    r = api.post(f"/sites/{site_id}/finetune", json={"model": "wknn"}, headers=ADMIN)
    assert r.status_code == 409 and "survey" in r.json()["detail"]


def test_size_limits(api: Api, site: str) -> None:
    too_many = [{"bssid": f"ap{i}", "rssi": -50} for i in range(api.app.state.runtime.settings.max_aps_per_scan + 1)]
    r = api.post("/locate", json={"site_id": site, "wifi": too_many}, headers=ADMIN)
    assert r.status_code == 422 and "limit" in r.json()["detail"]
    huge = b'{"name": "' + b"x" * (api.app.state.runtime.settings.max_body_bytes + 10) + b'"}'
    r = api.post("/sites", content=huge, headers={**ADMIN, "Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    batch = {"queries": [{"site_id": site, "wifi": _scan()}] * (api.app.state.runtime.settings.max_batch_queries + 1)}
    assert api.post("/locate/batch", json=batch, headers=ADMIN).status_code == 413


def test_malformed_bodies(api: Api, site: str) -> None:
    r = api.post("/locate", content=b"{not json", headers={**ADMIN, "Content-Type": "application/json"})
    assert r.status_code == 422
    r = api.post(f"/sites/{site}/surveys", content=b"{not json", headers={**ADMIN, "Content-Type": "application/json"})
    assert r.status_code == 422
    r = api.post(f"/sites/{site}/surveys", content=b"x", headers={**ADMIN, "Content-Type": "text/plain"})
    assert r.status_code == 422 and "Content-Type" in r.json()["detail"]
    r = api.post("/sites", json={"name": ""}, headers=ADMIN)
    assert r.status_code == 422
    r = api.post(f"/sites/{site}/finetune", json={"model": "wknn", "train_fraction": 2}, headers=ADMIN)
    assert r.status_code == 422


def test_bad_survey_keeps_nothing(api: Api) -> None:
    site_id = api.create_site("strict floors", floors=["0", "1"])
    good = [fp for fp in uji_survey("0") if fp["floor"] in ("0", "1")]
    bad = [*good, {**good[0], "floor": "7"}]
    r = api.post(f"/sites/{site_id}/surveys", json={"fingerprints": bad}, headers=ADMIN)
    assert r.status_code == 422 and "'7'" in r.json()["detail"]
    assert _counts(api, site_id)["fingerprints"] == 0
    bad_rssi = [*good, {**good[0], "wifi": [{"bssid": "WAP001", "rssi": 3}]}]
    r = api.post(f"/sites/{site_id}/surveys", json={"fingerprints": bad_rssi}, headers=ADMIN)
    assert r.status_code == 422 and "rssi" in str(r.json()["detail"])
    assert _counts(api, site_id)["fingerprints"] == 0


def test_models_and_strategies_a_site_cannot_use_are_a_clear_4xx(api: Api, site: str) -> None:
    r = api.post(f"/sites/{site}/finetune", json={"model": "mtloc"}, headers=ADMIN)
    assert r.status_code == 409 and "sensor windows" in r.json()["detail"]
    r = api.post(
        f"/sites/{site}/finetune", json={"model": "dnn", "strategy": "frozen", "transfer_from": [site]}, headers=ADMIN
    )
    assert r.status_code == 422 and "frozen" in r.json()["detail"] and "mtloc" in r.json()["detail"]
    r = api.post(
        f"/sites/{site}/finetune", json={"model": "wknn", "strategy": "msta", "transfer_from": [site]}, headers=ADMIN
    )
    assert r.status_code == 422 and "msta" in r.json()["detail"]


def test_cotrain_refuses_what_it_cannot_learn_from(api: Api, site: str) -> None:
    untrained = api.create_site("no model")
    r = api.post(f"/sites/{untrained}/cotrain", headers=ADMIN)
    assert r.status_code == 409 and "no active model" in r.json()["detail"]
    r = api.post(f"/sites/{site}/cotrain", json={"guard": "maybe"}, headers=ADMIN)
    assert r.status_code == 422
    # wknn has no co-training params of its own: a misspelt update param is named, before any job exists
    r = api.post(f"/sites/{site}/cotrain", json={"params": {"max_label_eror_m": 5}}, headers=ADMIN)
    assert r.status_code == 422 and "max_label_eror_m" in r.json()["detail"]
    r = api.post(f"/sites/{site}/cotrain", json={"params": {"single_query_labels": "maybe"}}, headers=ADMIN)
    assert r.status_code == 422 and "single_query_labels" in r.json()["detail"]
    # a wknn site learns from tracking sessions: single queries alone are refused, saying so
    r = api.post("/locate", json={"site_id": site, "wifi": _scan()}, headers=ADMIN)
    assert r.status_code == 200
    r = api.post(f"/sites/{site}/cotrain", headers=ADMIN)
    assert r.status_code == 409 and "session" in r.json()["detail"] and "wknn" in r.json()["detail"]


@pytest.mark.parametrize(
    ("sensors", "needle"),
    [
        ({"rate_hz": 10, "accel": [[0, 0, 9800]] * 10}, "accel"),  # milli-g, not m/s^2
        ({"rate_hz": 10, "gyro": [[0, 0, 180]] * 10}, "gyro"),  # degrees/s
        ({"rate_hz": 10, "mag": [[1, 2]] * 10}, "mag"),
        ({"rate_hz": 0, "accel": [[0, 0, 9.8]] * 10}, "rate_hz"),
        ({"rate_hz": 10, "accel": [[0, 0, 9.8]]}, "accel"),
    ],
)
def test_implausible_sensor_windows_are_422(api: Api, site: str, sensors: dict[str, Any], needle: str) -> None:
    r = api.post("/locate", json={"site_id": site, "wifi": _scan(), "sensors": sensors}, headers=ADMIN)
    assert r.status_code == 422 and needle in str(r.json()["detail"])


def test_wifi_query_with_a_sensor_window_is_answered_and_stored(api: Api, site: str) -> None:
    window = {"rate_hz": 10, "accel": [[0.1, 0.2, 9.8]] * 10, "gyro": [[0, 0, 0.1]] * 10}
    r = api.post("/locate", json={"site_id": site, "wifi": _scan(), "sensors": window}, headers=ADMIN)
    assert r.status_code == 200, r.text
    r = api.post("/locate", json={"site_id": site, "sensors": window}, headers=ADMIN)
    assert r.status_code == 422 and "needs a WiFi scan" in r.json()["detail"]
