"""A real `siteloc serve` process on a free port (embedded mode, temporary data dir) and a small trained site,
for the tests that drive the service from outside: CLI (tests/e2e) and the console in a browser (tests/browser)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.client import Client
from tests.conftest import FIXTURES

ADMIN_KEY = "live-admin-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SITELOC_")}
    env.update(SITELOC_DATA_DIR=str(data_dir), SITELOC_DEVICE="cpu", SITELOC_BOOTSTRAP_ADMIN_KEY=ADMIN_KEY)
    return env


class LiveServer:
    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.key = ADMIN_KEY
        self.log_path = data_dir / "server.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
            env=server_env(data_dir),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log_path.read_text(errors="replace"))
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not start in 120 s")

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self, key: str | None = None) -> Client:
        return Client(self.url, key or self.key)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._log.close()


@dataclass
class TrainedSite:
    id: str
    versions: list[int]


def trained_wknn_site(server: LiveServer, *, name: str = "UJI slice", versions: int = 2) -> TrainedSite:
    """A site from the UJIIndoorLoc fixture with `versions` wknn versions (the first active) and the fixture's
    validation scans located through it (so it has queries)."""
    from ml.data.ujiindoorloc import read_ujiindoorloc

    with server.client() as c:
        site = c.create_site(name)
        c.upload_survey_file(site.id, FIXTURES / "uji_train_small.csv", fmt="ujiindoorloc")
        made = []
        for k in range(versions):
            job = c.job_wait(c.finetune(site.id, model="wknn", seed=k, params={"k": 3 + 2 * k}), timeout=300)
            assert job.state == "succeeded", job.error
            made.append(job.model_version)
        queries = [
            {"site_id": site.id, "wifi": [{"bssid": w.bssid, "rssi": round(w.rssi)} for w in fp.wifi]}
            for fp in read_ujiindoorloc(FIXTURES / "uji_validation_small.csv")
            if fp.wifi
        ]
        c.locate_batch(queries)
    return TrainedSite(id=site.id, versions=made)
