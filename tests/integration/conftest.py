"""An API client on the session's backend (embedded or full mode), and small helpers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ml.data.jsonl import fingerprint_to_json
from ml.data.ujiindoorloc import read_ujiindoorloc
from tests.conftest import ADMIN_KEY, FIXTURES, Backend

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


class Api:
    """A TestClient with the admin key and helpers for the common flows."""

    def __init__(self, client: TestClient, backend: Backend) -> None:
        self.client = client
        self.backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def create_site(self, name: str = "site", **extra: Any) -> str:
        r = self.client.post("/sites", json={"name": name, **extra}, headers=ADMIN)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def upload(self, site_id: str, fingerprints: list[dict[str, Any]]) -> dict[str, Any]:
        r = self.client.post(f"/sites/{site_id}/surveys", json={"fingerprints": fingerprints}, headers=ADMIN)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def wait_job(self, job_id: str, timeout: float = 600.0) -> dict[str, Any]:
        # generous: a hung job still fails the test, and a loaded CI machine is not a hung job
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.client.get(f"/jobs/{job_id}", headers=ADMIN)
            assert r.status_code == 200, r.text
            job = dict(r.json())
            if job["state"] in ("succeeded", "failed"):
                return job
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} did not finish in {timeout} s: {job}")

    def finetune(self, site_id: str, **body: Any) -> dict[str, Any]:
        r = self.client.post(f"/sites/{site_id}/finetune", json={"model": "wknn", **body}, headers=ADMIN)
        assert r.status_code == 202, r.text
        return self.wait_job(r.json()["job_id"])

    def trained_site(self, name: str = "trained") -> str:
        site_id = self.create_site(name)
        self.upload(site_id, uji_survey())
        job = self.finetune(site_id)
        assert job["state"] == "succeeded", job
        return site_id


def uji_survey(building: str | None = None) -> list[dict[str, Any]]:
    """The UJIIndoorLoc training fixture as API fingerprint objects (rows with no AP left out)."""
    fps = read_ujiindoorloc(FIXTURES / "uji_train_small.csv")
    return [fingerprint_to_json(fp) for fp in fps if fp.wifi and (building is None or fp.building == building)]


def uji_queries(building: str | None = None) -> list[dict[str, Any]]:
    """Validation-fixture scans (recorded months after the survey) with their true labels."""
    fps = read_ujiindoorloc(FIXTURES / "uji_validation_small.csv")
    return [fingerprint_to_json(fp) for fp in fps if fp.wifi and (building is None or fp.building == building)]


@pytest.fixture(scope="module")
def api(backend: Backend) -> Iterator[Api]:
    from app.main import create_app

    app = create_app(backend.settings())
    with TestClient(app) as client:
        yield Api(client, backend)
