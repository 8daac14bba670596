"""Health endpoints, metrics, and model pick-up across processes without a restart."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from app.main import create_app
from tests.integration.conftest import ADMIN, Api, uji_queries


def test_health_ready_metrics(api: Api) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    r = api.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    assert r.json()["mode"] == api.backend.mode
    if api.backend.mode == "full":
        assert r.json()["checks"]["redis"] == "ok"
    api.get("/sites", headers=ADMIN)
    text = api.get("/metrics").text
    assert "siteloc_http_requests_total" in text and 'route="/sites"' in text


def test_activation_in_another_process_is_picked_up(api: Api) -> None:
    """A second app instance (its own runtime, cache and connections) plays the other process."""
    site_id = api.trained_site("pickup")
    assert api.finetune(site_id)["model_version"] == 2
    q = {"site_id": site_id, "wifi": uji_queries()[0]["wifi"]}
    assert api.post("/locate", json=q, headers=ADMIN).json()["model"]["version"] == 1

    other = create_app(api.backend.settings())
    with TestClient(other) as c:
        assert c.post(f"/sites/{site_id}/models/2/activate", headers=ADMIN).status_code == 200
    deadline = time.monotonic() + 10
    version = 1
    while time.monotonic() < deadline and version != 2:
        version = api.post("/locate", json=q, headers=ADMIN).json()["model"]["version"]
        time.sleep(0.1)
    assert version == 2


def test_openapi_documents_every_route(api: Api) -> None:
    spec = api.get("/openapi.json").json()
    for path in (
        "/sites",
        "/sites/{site_id}/surveys",
        "/sites/{site_id}/finetune",
        "/jobs/{job_id}",
        "/sites/{site_id}/models",
        "/sites/{site_id}/models/{version}/activate",
        "/locate",
        "/locate/batch",
        "/keys",
        "/keys/{key_id}",
        "/sites/{site_id}/cotrain",
    ):
        assert path in spec["paths"], path
    assert "SurveyIn" in spec["components"]["schemas"]
