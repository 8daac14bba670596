"""Fingerprint networks and cross-site transfer through the finetune API (tiny configs, real training)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from tests.integration.conftest import ADMIN, Api, uji_queries, uji_survey

TINY: dict[str, Any] = {
    "hidden": 32,
    "latent": 16,
    "rep": 16,
    "channels": 4,
    "epochs": 40,
    "batch_size": 16,
    "patience": 20,
    "sae_epochs": 2,
    "mc_passes": 2,
    "pretrain_epochs": 5,
    "freeze_epochs": 3,
    "gan_steps": 20,
    "gan_batch": 16,
    "gen_hidden": 16,
    "noise_dim": 4,
    "mi_hidden": 8,
}
NET = {
    k: v
    for k, v in TINY.items()
    if k in ("hidden", "latent", "rep", "channels", "epochs", "batch_size", "patience", "sae_epochs", "mc_passes")
}


@pytest.fixture(scope="module")
def buildings(api: Api) -> dict[str, str]:
    out = {}
    for b in ("0", "1", "2"):
        site = api.create_site(f"UJI building {b}")
        api.upload(site, uji_survey(b))
        out[b] = site
    return out


def test_dnn_trains_and_locates(api: Api, buildings: dict[str, str]) -> None:
    job = api.finetune(buildings["0"], model="dnn", params=NET)
    assert job["state"] == "succeeded", job
    errs = []
    for q in uji_queries("0"):
        r = api.post("/locate", json={"site_id": buildings["0"], "wifi": q["wifi"]}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert r.json()["model"]["name"] == "dnn"
        errs.append(math.hypot(r.json()["x"] - q["x"], r.json()["y"] - q["y"]))
    # Building 0 spans ~150 m; an untrained or broken network lands tens of metres off.
    assert np.median(errs) < 30, np.median(errs)


@pytest.mark.parametrize("strategy", ["encoder", "msta"])
def test_transfer_reports_the_scratch_baseline_and_reuses_artifacts(
    api: Api, buildings: dict[str, str], strategy: str
) -> None:
    body = {"model": "dnn", "strategy": strategy, "transfer_from": [buildings["0"], buildings["1"]], "params": TINY}
    job = api.finetune(buildings["2"], **body)
    assert job["state"] == "succeeded", job
    brief = job["result"]["transfer"]
    assert brief["strategy"] == strategy and brief["chosen"] in (strategy, "scratch")
    assert brief["scratch"]["holdout"] is not None and brief[strategy]["holdout"] is not None
    versions = api.get(f"/sites/{buildings['2']}/models", headers=ADMIN).json()
    record = next(v for v in versions if v["version"] == job["model_version"])["training"]["transfer"]
    assert any(note["built"] for note in record["artifacts"])
    # A second target reuses the stored artifacts (the sources' surveys did not change).
    again = api.finetune(buildings["2"], **body)
    assert again["state"] == "succeeded", again
    versions = api.get(f"/sites/{buildings['2']}/models", headers=ADMIN).json()
    record = next(v for v in versions if v["version"] == again["model_version"])["training"]["transfer"]
    assert not any(note["built"] for note in record["artifacts"])


def test_transfer_requests_are_checked(api: Api, buildings: dict[str, str]) -> None:
    target = buildings["2"]

    def post(body: dict[str, Any]) -> Any:
        return api.post(f"/sites/{target}/finetune", json=body, headers=ADMIN)

    r = post({"model": "dnn", "strategy": "encoder"})
    assert r.status_code == 422 and "transfer_from" in r.json()["detail"]
    r = post({"model": "dnn", "transfer_from": [buildings["0"]]})
    assert r.status_code == 422 and "strategy" in r.json()["detail"]
    r = post({"model": "dnn", "strategy": "msta", "transfer_from": [target]})
    assert r.status_code == 422 and "itself" in r.json()["detail"]
    r = post({"model": "dnn", "strategy": "msta", "transfer_from": ["nope"]})
    assert r.status_code == 404
    for model in ("wknn", "itoloc"):  # itoloc's extractor is not a transfer target (docs/benchmarks/transfer.md)
        r = post({"model": model, "strategy": "encoder", "transfer_from": [buildings["0"]]})
        assert r.status_code == 422 and "dnn" in r.json()["detail"] and model in r.json()["detail"]
    empty = api.create_site("no survey")
    r = post({"model": "dnn", "strategy": "encoder", "transfer_from": [empty]})
    assert r.status_code == 409
