"""MTLoc through the public API: sensor-window surveys, /locate with any mix of modalities, IMU-LSTM transfer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from ml.data.ilc2020 import read_ilc_windows
from tests.integration.conftest import ADMIN, Api

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SOURCE = FIXTURES / "ilc_site1_F1_small.tar.xz"
TARGET = FIXTURES / "ilc_site2" / "F2" / "path_data_files" / "5dd60b8950e04e0006f5669d.txt"
TINY: dict[str, Any] = {
    "n_aps": 64,
    "wifi_hidden": 16,
    "imu_hidden": 8,
    "mag_hidden": 8,
    "fusion_hidden": 16,
    "epochs": 30,
    "batch_size": 32,
    "lr": 0.01,
    "pretrain_epochs": 2,
}


def _upload_trace(api: Api, site_id: str, path: Path) -> dict[str, Any]:
    r = api.post(
        f"/sites/{site_id}/surveys",
        files={"file": (path.name, path.read_bytes())},
        data={"format": "ilc2020", "window_stride_ms": "100"},
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    return dict(r.json())


def _sensors(fp: Any) -> dict[str, Any]:
    s = fp.sensors
    return {"rate_hz": s.rate_hz, "accel": s.accel.tolist(), "gyro": s.gyro.tolist(), "mag": s.mag.tolist()}


def _wifi(fp: Any) -> list[dict[str, Any]]:
    return [{"bssid": r.bssid, "rssi": r.rssi} for r in fp.wifi]


@pytest.fixture(scope="module")
def sites(api: Api) -> dict[str, str]:
    out = {}
    for name, path in (("source", SOURCE), ("target", TARGET)):
        out[name] = api.create_site(f"mall {name}")
        assert _upload_trace(api, out[name], path)["windows"] > 50
    return out


def test_mtloc_trains_on_windows_and_answers_wifi_sensors_or_both(api: Api, sites: dict[str, str]) -> None:
    job = api.finetune(sites["source"], model="mtloc", params=TINY)
    assert job["state"] == "succeeded", job
    versions = api.get(f"/sites/{sites['source']}/models", headers=ADMIN).json()
    training = next(v for v in versions if v["version"] == job["model_version"])["training"]
    assert training["trained_on"] == "windows" and "holdout_window_ids" not in training
    windows = [w for w in read_ilc_windows(SOURCE, stride_ms=1000) if w.wifi][:5]
    full_err, answers = [], {}
    for w in windows:
        for kind, body in {
            "both": {"wifi": _wifi(w), "sensors": _sensors(w)},
            "wifi": {"wifi": _wifi(w)},
            "sensors": {"sensors": _sensors(w)},
            "partial": {"wifi": _wifi(w), "sensors": {**_sensors(w), "gyro": None, "mag": _sensors(w)["mag"][-3:]}},
        }.items():
            r = api.post("/locate", json={"site_id": sites["source"], **body}, headers=ADMIN)
            assert r.status_code == 200, (kind, r.text)
            out = r.json()
            assert out["model"]["name"] == "mtloc" and out["error_m"] > 0 and math.isfinite(out["x"])
            answers.setdefault(kind, []).append(out["error_m"])
            if kind == "both":
                full_err.append(math.hypot(out["x"] - w.x, out["y"] - w.y))
    # The fixture floor spans ~100 m; a broken model lands tens of metres off.
    assert sum(full_err) / len(full_err) < 40, full_err
    # Every answer was stored, sensor windows included.
    site = api.get(f"/sites/{sites['source']}", headers=ADMIN).json()
    assert site["counts"]["queries"] >= 4 * len(windows)


def test_sensor_only_query_needs_a_model_that_reads_sensors(api: Api, sites: dict[str, str]) -> None:
    job = api.finetune(sites["target"], model="wknn")
    assert job["state"] == "succeeded", job
    w = next(iter(read_ilc_windows(TARGET, stride_ms=1000)))
    r = api.post("/locate", json={"site_id": sites["target"], "sensors": _sensors(w)}, headers=ADMIN)
    assert r.status_code == 422 and "needs a WiFi scan" in r.json()["detail"]


def test_imu_lstm_transfer_builds_once_and_is_reused(api: Api, sites: dict[str, str]) -> None:
    for strategy in ("frozen", "finetune"):
        body = {"model": "mtloc", "strategy": strategy, "transfer_from": [sites["source"]], "params": TINY}
        job = api.finetune(sites["target"], **body)
        assert job["state"] == "succeeded", job
        versions = api.get(f"/sites/{sites['target']}/models", headers=ADMIN).json()
        training = next(v for v in versions if v["version"] == job["model_version"])["training"]
        assert training["strategy"] == strategy and training["transfer"]["report"]["sources"] == [sites["source"]]
        built = training["transfer"]["artifacts"][0]["built"]
        # The first transfer pretrains the IMU-LSTM; the second reuses the stored artifact (same settings, same
        # source surveys), whichever strategy uses it.
        assert built == (strategy == "frozen")


def test_mtloc_transfer_needs_sources_with_windows(api: Api, sites: dict[str, str]) -> None:
    plain = api.create_site("no windows")
    r = api.post(
        f"/sites/{plain}/surveys",
        json={"fingerprints": [{"wifi": [{"bssid": "aa:bb:cc:dd:ee:01", "rssi": -50}], "x": 0, "y": 0, "floor": "1"}]},
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    r = api.post(
        f"/sites/{sites['target']}/finetune",
        json={"model": "mtloc", "strategy": "frozen", "transfer_from": [plain]},
        headers=ADMIN,
    )
    assert r.status_code == 409 and "sensor windows" in r.json()["detail"]
    r = api.post(
        f"/sites/{sites['target']}/finetune", json={"model": "mtloc", "params": {"lstm_layers": 2}}, headers=ADMIN
    )
    assert r.status_code == 422 and "lstm_layers" in r.json()["detail"], r.text
