"""A big floor plan stalls no other client: the fuzz review's scenario against a real `siteloc serve`.

The review PUT a 150,000-vertex star (allowed then): the first session query at the site then rasterised it on
the event loop for 87 s, and /healthz from another client went unanswered for over 60 s. Here the plan is the
costliest kind still allowed (a comb of 12,000 teeth: 48,000 vertices); the PUT checks and rasterises it in its
worker thread and the session query finds it built."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.live import LiveServer, trained_wknn_site

pytestmark = pytest.mark.skipif(
    os.environ.get("SITELOC_TEST_DATABASE_URL") is not None, reason="live-server tests run in the embedded pass"
)


def _comb(teeth: int, side: float = 1000.0) -> list[list[float]]:
    w = side / teeth
    ring = [[0.0, 0.0]]
    for i in range(teeth):
        ring += [[i * w, side], [i * w + w / 2, side], [i * w + w / 2, 1.0], [(i + 1) * w, 1.0]]
    return [*ring, [side, 0.0], [0.0, 0.0]]


def test_a_big_plan_stalls_no_other_client(tmp_path: Path) -> None:
    from ml.data.ujiindoorloc import read_ujiindoorloc
    from tests.conftest import FIXTURES

    with LiveServer(tmp_path / "server") as server:
        site = trained_wknn_site(server, versions=1).id
        headers = {"Authorization": f"Bearer {server.key}"}
        latencies: list[float] = []
        stop = threading.Event()

        def poll() -> None:
            with httpx.Client(base_url=server.url, timeout=120) as c:
                while not stop.is_set():
                    t = time.perf_counter()
                    assert c.get("/healthz").status_code == 200
                    latencies.append(time.perf_counter() - t)
                    time.sleep(0.02)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        plan = {
            "type": "FeatureCollection",
            "features": [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [_comb(12_000)]}}],
        }
        fp = next(f for f in read_ujiindoorloc(FIXTURES / "uji_validation_small.csv") if f.wifi)
        wifi = [{"bssid": w.bssid, "rssi": round(w.rssi)} for w in fp.wifi]
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as c:
            t = time.perf_counter()
            r = c.put(f"/sites/{site}/floors/{fp.floor}/plan", json=plan)
            put_s = time.perf_counter() - t
            assert r.status_code == 200, r.text[:500]
            t = time.perf_counter()
            r = c.post("/locate", json={"site_id": site, "wifi": wifi, "session_id": "comb", "timestamp": 1})
            locate_s = time.perf_counter() - t
            assert r.status_code == 200, r.text
        stop.set()
        poller.join(timeout=120)
        assert latencies, "no /healthz answered"
        # generous for a loaded 2-core machine: the old code stalled the loop for minutes on this plan
        assert put_s < 20 and locate_s < 2, (put_s, locate_s)
        assert max(latencies) < 1.0, (max(latencies), put_s, locate_s)
