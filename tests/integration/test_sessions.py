"""Tracking sessions and floor plans through the API (embedded mode, and full mode with Redis + PostgreSQL)."""

from __future__ import annotations

import io
import json
import math
import tarfile
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from tests.fixture_data import FIXTURES
from tests.integration.conftest import ADMIN, Api, uji_queries

BOX = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "properties": {},
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [50, 0], [50, 20], [0, 20], [0, 0]]]},
        }
    ],
}


def _walk_window(heading_deg: float, steps: int = 2, rate: float = 50.0) -> dict[str, Any]:
    """One second of a phone held flat, walking `steps` steps towards `heading_deg` (from east, CCW)."""
    n = int(rate)
    t = [i / rate for i in range(n)]
    accel = [[0.0, 0.0, 9.81 + 3.0 * math.sin(2 * math.pi * steps * s - math.pi / 2)] for s in t]
    # device y axis pointing at the heading: yaw about the up axis by (heading - 90 deg)
    half = math.radians(heading_deg - 90.0) / 2
    rot = [[0.0, 0.0, math.sin(half), math.cos(half)]] * n
    return {"rate_hz": rate, "accel": accel, "rotation": rot}


def _key(api: Api, role: str = "app") -> dict[str, str]:
    r = api.post("/keys", json={"role": role, "name": f"sessions-{role}"}, headers=ADMIN)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['key']}"}


def test_session_queries_track_and_are_stored(api: Api) -> None:
    site = api.trained_site("sessions")
    scans = [q["wifi"] for q in uji_queries("0")][:4]
    key = _key(api)
    t0 = 1_700_000_000_000
    answers = []
    for i, wifi in enumerate(scans):
        body = {"site_id": site, "wifi": wifi, "session_id": "walk 1", "timestamp": t0 + 1000 * i}
        if i:
            body["sensors"] = _walk_window(0.0)
        r = api.post("/locate", json=body, headers=key)
        assert r.status_code == 200, r.text
        a = r.json()
        assert a["session_id"] == "walk 1" and a["error_m"] > 0
        answers.append(a)
    # motion alone: no WiFi, no site_id (the session knows its site)
    r = api.post(
        "/locate",
        json={"session_id": "walk 1", "timestamp": t0 + 5000, "sensors": _walk_window(0.0)},
        headers=key,
    )
    assert r.status_code == 200, r.text
    assert r.json()["site_id"] == site and r.json()["session_id"] == "walk 1"
    # the track: one causal and one smoothed point per answered query
    r = api.get("/sessions/walk 1", headers=key)
    assert r.status_code == 200, r.text
    track = r.json()
    assert track["site_id"] == site and len(track["points"]) == 5 and len(track["smoothed"]) == 5
    assert [p["timestamp"] for p in track["points"]] == [t0, t0 + 1000, t0 + 2000, t0 + 3000, t0 + 5000]
    assert abs(track["points"][0]["x"] - answers[0]["x"]) < 1e-2
    # another key: the session does not exist for it
    assert api.get("/sessions/walk 1", headers=_key(api)).status_code == 404
    assert api.get("/sessions/walk 1", headers=ADMIN).status_code == 404
    # stored with the session id
    engine = create_engine(api.backend.database_url)
    with engine.connect() as c:
        n = c.execute(text("select count(*) from queries where session_id = 'walk 1'")).scalar()
    engine.dispose()
    assert n == 5


def test_session_input_errors_are_422(api: Api) -> None:
    site = api.trained_site("sessions-bad")
    wifi = uji_queries("0")[0]["wifi"]
    key = _key(api)
    # session_id needs a timestamp
    r = api.post("/locate", json={"site_id": site, "wifi": wifi, "session_id": "s"}, headers=key)
    assert r.status_code == 422 and "timestamp" in r.text
    for bad in ("", "x" * 65, "tab\there"):
        r = api.post("/locate", json={"site_id": site, "wifi": wifi, "session_id": bad, "timestamp": 1}, headers=key)
        assert r.status_code == 422, bad
    # a first query with no WiFi has no position to start from
    r = api.post("/locate", json={"session_id": "new", "timestamp": 5, "sensors": _walk_window(0.0)}, headers=key)
    assert r.status_code == 422 and "WiFi" in r.text
    # time goes forward
    assert (
        api.post(
            "/locate", json={"site_id": site, "wifi": wifi, "session_id": "s", "timestamp": 10_000}, headers=key
        ).status_code
        == 200
    )
    r = api.post("/locate", json={"site_id": site, "wifi": wifi, "session_id": "s", "timestamp": 9_999}, headers=key)
    assert r.status_code == 422 and "earlier" in r.text
    # in a batch too, and the batch is refused whole
    r = api.post(
        "/locate/batch",
        json={
            "queries": [
                {"site_id": site, "wifi": wifi},
                {"site_id": site, "wifi": wifi, "session_id": "s", "timestamp": 1},
            ]
        },
        headers=key,
    )
    assert r.status_code == 422 and "queries[1]" in r.text
    # windows longer than 10 s
    long = {"rate_hz": 10.0, "accel": [[0.0, 0.0, 9.8]] * 120}
    r = api.post(
        "/locate",
        json={"site_id": site, "wifi": wifi, "session_id": "s", "timestamp": 20_000, "sensors": long},
        headers=key,
    )
    assert r.status_code == 422 and "10 s" in r.text
    # without session_id nothing changes: no session_id in the answer
    r = api.post("/locate", json={"site_id": site, "wifi": wifi}, headers=key)
    assert r.status_code == 200 and "session_id" not in r.json()


def test_batch_sessions_in_order(api: Api) -> None:
    site = api.trained_site("sessions-batch")
    qs = uji_queries("0")[:3]
    key = _key(api)
    body = {
        "queries": [
            {"site_id": site, "wifi": q["wifi"], "session_id": "b", "timestamp": 1000 * i} for i, q in enumerate(qs)
        ]
    }
    r = api.post("/locate/batch", json=body, headers=key)
    assert r.status_code == 200, r.text
    assert [a["session_id"] for a in r.json()["results"]] == ["b", "b", "b"]
    assert len(api.get("/sessions/b", headers=key).json()["points"]) == 3


def test_a_failed_request_leaves_its_sessions_as_they_were(api: Api) -> None:
    """A batch is answered whole or not at all, sessions included: a refused batch advances no session."""
    site = api.trained_site("sessions-atomic")
    wifi = uji_queries("0")[0]["wifi"]
    key = _key(api)
    walk = _walk_window(0.0)

    def batch(*queries: dict[str, Any]) -> Any:
        return api.post("/locate/batch", json={"queries": list(queries)}, headers=key)

    # the second query cannot be answered (its session has no position): the first session must not be opened
    r = batch(
        {"site_id": site, "wifi": wifi, "session_id": "a1", "timestamp": 1000},
        {"session_id": "a2", "timestamp": 1000, "sensors": walk},
    )
    assert r.status_code == 422 and "queries[1]" in r.text, r.text
    assert api.get("/sessions/a1", headers=key).status_code == 404
    # within one session: its later query going back in time refuses the batch, and the session stays unopened
    r = batch(
        {"site_id": site, "wifi": wifi, "session_id": "a3", "timestamp": 5000},
        {"site_id": site, "wifi": wifi, "session_id": "a3", "timestamp": 4000},
    )
    assert r.status_code == 422 and "earlier" in r.text, r.text
    assert api.get("/sessions/a3", headers=key).status_code == 404
    # a session opened earlier in the same batch gives a motion-only query (no site_id) its site
    r = batch(
        {"site_id": site, "wifi": wifi, "session_id": "a4", "timestamp": 1000},
        {"session_id": "a4", "timestamp": 2000, "sensors": walk},
    )
    assert r.status_code == 200, r.text
    assert [a["site_id"] for a in r.json()["results"]] == [site, site]
    assert len(api.get("/sessions/a4", headers=key).json()["points"]) == 2


def test_hostile_session_queries(api: Api) -> None:
    """Inputs a fuzz review found: none may answer 500 or leave a session that answers NaN."""
    site = api.trained_site("sessions-hostile")
    wifi = uji_queries("0")[0]["wifi"]
    key = _key(api)

    def locate(body: dict[str, Any]) -> Any:
        return api.post("/locate", json={"site_id": site, **body}, headers=key)

    assert locate({"wifi": wifi, "session_id": "h", "timestamp": 1000}).status_code == 200
    # a window over 10 s whose streams have different lengths (each modality its own count)
    steps = [[0.0, 0.0, 9.81 + 3.0 * math.sin(2 * math.pi * 2 * i / 10 - math.pi / 2)] for i in range(105)]
    odd = [
        {"rate_hz": 10, "accel": [[0.0, 0.0, 9.8]] * 101, "rotation": [[0.0, 0.0, 0.0, 1.0]]},
        {"rate_hz": 10, "accel": [[0.0, 0.0, 9.8]] * 105, "mag": [[20.0, 0.0, -40.0]] * 105, "gyro": [[0.0] * 3] * 2},
        {"rate_hz": 10, "accel": steps, "mag": [[20.0, 0.0, -40.0]] * 2},
    ]
    for i, window in enumerate(odd):
        r = locate({"session_id": "h", "timestamp": 2000 + 1000 * i, "sensors": window})
        assert r.status_code == 200, r.text
        assert all(math.isfinite(r.json()[k]) for k in ("x", "y", "error_m"))
    r = locate({"wifi": wifi, "session_id": "h", "timestamp": 9000})
    assert r.status_code == 200, r.text
    track = api.get("/sessions/h", headers=key).json()
    assert len(track["points"]) == 5 and all(p["x"] is not None for p in track["points"] + track["smoothed"])
    # a gap of years on the client clock: the next fix restarts the track at the fix, not a billion metres away
    first = locate({"wifi": wifi, "session_id": "gap", "timestamp": 1})
    far = locate({"wifi": wifi, "session_id": "gap", "timestamp": 10**15})
    assert first.status_code == far.status_code == 200
    assert math.hypot(far.json()["x"] - first.json()["x"], far.json()["y"] - first.json()["y"]) < 50
    # timestamps beyond what a session keeps exactly; NaN sampling rates: named 422s
    r = locate({"wifi": wifi, "session_id": "big", "timestamp": 2**53})
    assert r.status_code == 422 and "2^53" in r.text
    r = api.post(
        "/locate",
        content=(
            f'{{"site_id": "{site}", "wifi": {json.dumps(wifi)}, '
            '"sensors": {"rate_hz": NaN, "accel": [[0,0,9.8],[0,0,9.8]]}}'
        ),
        headers={**key, "Content-Type": "application/json"},
    )
    assert r.status_code == 422 and "rate_hz" in r.text, r.text
    # a session id with "/" can be read back
    assert locate({"wifi": wifi, "session_id": "floor/walk", "timestamp": 1}).status_code == 200
    r = api.get("/sessions/floor%2Fwalk", headers=key)
    assert r.status_code == 200 and r.json()["session_id"] == "floor/walk", r.text
    assert api.get("/sessions/floor/walk", headers=key).status_code == 200
    # model versions beyond any id: 422, not a database overflow
    r = api.get(f"/sites/{site}/models/99999999999999999999", headers=ADMIN)
    assert r.status_code == 422, r.text


def test_any_api_process_continues_a_session(api: Api) -> None:
    """Full mode keeps sessions in Redis: a second app (another API process) answers the next query."""
    from app.main import create_app

    if api.backend.redis_url is None:
        return  # embedded mode is one process by definition
    site = api.trained_site("sessions-two")
    wifi = uji_queries("0")[0]["wifi"]
    body = {"site_id": site, "wifi": wifi, "session_id": "two", "timestamp": 1}
    assert api.post("/locate", json=body, headers=ADMIN).status_code == 200
    with TestClient(create_app(api.backend.settings())) as other:
        r = other.post("/locate", json={**body, "timestamp": 2}, headers=ADMIN)
        assert r.status_code == 200, r.text
        assert len(other.get("/sessions/two", headers=ADMIN).json()["points"]) == 2


def test_floor_plans(api: Api) -> None:
    site = api.create_site("plans", floors=["0", "1"])
    r = api.put(f"/sites/{site}/floors/0/plan", json=BOX, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["area_m2"] == 1000.0
    r = api.get(f"/sites/{site}/floors/0/plan", headers=ADMIN)
    assert r.status_code == 200 and r.json()["plan"] == BOX
    assert api.get(f"/sites/{site}/floors/1/plan", headers=ADMIN).status_code == 404
    assert api.put(f"/sites/{site}/floors/7/plan", json=BOX, headers=ADMIN).status_code == 422
    for bad in (
        {"type": "Feature"},
        {"type": "FeatureCollection", "features": []},
        {"type": "FeatureCollection", "features": [{"geometry": {"type": "Point", "coordinates": [0, 0]}}]},
    ):
        r = api.put(f"/sites/{site}/floors/0/plan", json=bad, headers=ADMIN)
        assert r.status_code == 422, r.text
    assert api.put(f"/sites/{site}/floors/0/plan", json=BOX, headers=_key(api)).status_code == 403


def _put_raw(api: Api, site: str, floor: str, body: str) -> Any:
    headers = {**ADMIN, "Content-Type": "application/json"}
    return api.put(f"/sites/{site}/floors/{floor}/plan", content=body.encode(), headers=headers)


def _plan(*rings: list[list[float]], **extra: Any) -> dict[str, Any]:
    geometry = {"type": "Polygon", "coordinates": list(rings)}
    return {"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": geometry}], **extra}


def _square(x0: float, y0: float, side: float) -> list[list[float]]:
    return [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e309", "true"])
def test_plan_numbers_are_finite_and_coordinates_numbers(api: Api, value: str) -> None:
    """NaN/Infinity/1e309 anywhere in a plan, or a boolean coordinate: 422 naming where, nothing stored (NaN in
    the coordinates was a 500 from shapely, in `properties` it was stored, which PostgreSQL's JSON refuses)."""
    site = api.create_site("plan-numbers")
    ok = '{"type":"Polygon","coordinates":[[[0,0],[10,0],[10,10],[0,0]]]}'
    bad = f'{{"type":"Polygon","coordinates":[[[0,0],[{value},0],[10,10],[0,0]]]}}'
    bodies = {
        ("features", 0, "geometry", "Polygon", "coordinates", 0, 1, 0): (
            f'{{"type":"FeatureCollection","features":[{{"type":"Feature","properties":{{}},"geometry":{bad}}}]}}'
        ),
        ("features", 0, "properties", "height"): (
            f'{{"type":"FeatureCollection","features":[{{"type":"Feature","properties":{{"height":{value}}},'
            f'"geometry":{ok}}}]}}'
        ),
        ("bbox",): f'{{"type":"FeatureCollection","bbox":[0,0,{value},10],"features":[{{"geometry":{ok}}}]}}',
    }
    for loc, body in bodies.items():
        r = _put_raw(api, site, "0", body)
        if value == "true" and loc[-1] != 0:
            assert r.status_code == 200, r.text  # a boolean is fine outside the coordinates
            continue
        assert r.status_code == 422, (loc, r.text)
        assert any(tuple(e["loc"][1 : len(loc) + 1]) == loc for e in r.json()["errors"]), (loc, r.json())
        assert api.get(f"/sites/{site}/floors/0/plan", headers=ADMIN).status_code == 404


def test_plan_geometry_limits_are_422_and_sessions_keep_working(api: Api) -> None:
    """The fuzz review's plans: a 1e308 square was stored ("area_m2": null) and then every session query at the
    site was a 500; now such plans are 422s naming the problem, and the site's sessions keep answering."""
    site = api.trained_site("plan-limits")
    big = 1e308
    huge = [[-big, -big], [big, -big], [big, big], [-big, big], [-big, -big]]
    for plan, needle in (
        (_plan(huge), "from the site's origin"),
        (_plan([[x * 1e155 for x in p] for p in _square(-1, -1, 2)]), "from the site's origin"),
        (_plan([[x * 1e200 for x in p] for p in _square(-1, -1, 2)]), "from the site's origin"),
        (_plan(_square(0, 0, 30_000)), "spans 30000 x 30000 m"),
        (_plan(_square(0, 0, 1e-9)), "at least 1 m^2"),
        (_plan(_square(0, 0, 10), _square(0, 0, 10)), "walkable area is empty"),
    ):
        r = api.put(f"/sites/{site}/floors/0/plan", json=plan, headers=ADMIN)
        assert r.status_code == 422 and needle in r.json()["detail"], r.text
    assert api.get(f"/sites/{site}/floors/0/plan", headers=ADMIN).status_code == 404
    # a hole outside its shell takes nothing away and adds nothing (was 125 m^2 here)
    r = api.put(f"/sites/{site}/floors/0/plan", json=_plan(_square(0, 0, 10), _square(20, 0, 5)), headers=ADMIN)
    assert r.status_code == 200 and r.json()["area_m2"] == 100.0, r.text
    # the UJIIndoorLoc frame (Web Mercator metres) is a site frame like any other
    uji = _plan([[-7700.0, 4864700.0], [-7250.0, 4864700.0], [-7250.0, 4865050.0], [-7700.0, 4865050.0]])
    r = api.put(f"/sites/{site}/floors/0/plan", json=uji, headers=ADMIN)
    assert r.status_code == 200 and r.json()["area_m2"] == 157_500.0, r.text
    wifi = uji_queries("0")[0]["wifi"]
    body = {"site_id": site, "wifi": wifi, "session_id": "plan-limits", "timestamp": 1}
    assert api.post("/locate", json=body, headers=ADMIN).status_code == 200


def test_a_stored_plan_that_breaks_the_limits_is_left_out(api: Api) -> None:
    """A plan stored before these limits (the 1e308 square the old code took) no longer fails the site's session
    queries (a 500 from the raster) or its GET: tracking leaves it out, GET shows it with area_m2 null."""
    from app.models import FloorPlan
    from app.models.tables import utcnow

    site = api.trained_site("plan-legacy")
    big = 1e308
    legacy = _plan([[-big, -big], [big, -big], [big, big], [-big, big], [-big, -big]])
    rt = api.app.state.runtime
    with rt.db.session() as s:
        s.add(FloorPlan(site_id=site, floor="0", geojson=legacy, source="api", updated_at=utcnow()))
    rt.plans.invalidate(site)
    wifi = uji_queries("0")[0]["wifi"]
    body = {"site_id": site, "wifi": wifi, "session_id": "plan-legacy", "timestamp": 1}
    r = api.post("/locate", json=body, headers=ADMIN)
    assert r.status_code == 200, r.text
    r = api.get(f"/sites/{site}/floors/0/plan", headers=ADMIN)
    assert r.status_code == 200 and r.json()["area_m2"] is None, r.text


def test_plan_vertices_are_geometry_coordinates_only(api: Api) -> None:
    """A big unrelated array in the body is not counted as vertices (it was: "300005 vertices"); geometry
    coordinates over the limit are, exactly."""
    from ml.tracking.floorplan import MAX_VERTICES

    site = api.create_site("plan-vertices")
    junk = [[i, 0] for i in range(210_000)]
    r = api.put(f"/sites/{site}/floors/0/plan", json=_plan(_square(0, 0, 10), samples=junk), headers=ADMIN)
    assert r.status_code == 200 and r.json()["area_m2"] == 100.0, r.text[:300]
    assert len(api.get(f"/sites/{site}/floors/0/plan", headers=ADMIN).json()["plan"]["samples"]) == 210_000
    t = [2 * math.pi * k / MAX_VERTICES for k in range(MAX_VERTICES)]
    ring = [[100 * math.cos(a), 100 * math.sin(a)] for a in t]
    r = api.put(f"/sites/{site}/floors/0/plan", json=_plan([*ring, ring[0]]), headers=ADMIN)
    assert r.status_code == 422 and f"{MAX_VERTICES + 1} vertices; the limit is {MAX_VERTICES}" in r.text, r.text


@pytest.mark.parametrize("floor", ["x" * 65, "a%00b", "%00"])
def test_plan_floor_label_is_checked(api: Api, floor: str) -> None:
    """The floor is a label like every other (1-64 characters, no NUL): a 422 on SQLite and on PostgreSQL (the
    column is String(64) and PostgreSQL refuses NUL: this was a 500 there, and stored as given on SQLite)."""
    site = api.create_site("plan-floor")
    r = api.put(f"/sites/{site}/floors/{floor}/plan", json=BOX, headers=ADMIN)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["path", "floor"], r.text
    r = api.get(f"/sites/{site}/floors/{floor}/plan", headers=ADMIN)
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["path", "floor"], r.text
    assert api.put(f"/sites/{site}/floors/{'x' * 64}/plan", json=BOX, headers=ADMIN).status_code == 200


def test_a_put_plan_is_used_at_once_and_not_rebuilt(api: Api) -> None:
    """The PUT checks and rasterises the plan (in its worker thread) and hands the raster to this process's plan
    cache: the next session query finds it built, with no database read or rasterising on the event loop."""
    site = api.create_site("plan-cache", floors=["0"])
    plans = api.app.state.runtime.plans
    assert plans(site) == {}  # loaded: fresh for 30 s
    r = api.put(f"/sites/{site}/floors/0/plan", json=BOX, headers=ADMIN)
    assert r.status_code == 200, r.text
    assert not plans.due(site)
    walkable = plans(site)["0"]
    assert walkable.contains(np.array([[25.0, 10.0], [60.0, 10.0]])).tolist() == [True, False]
    # a re-read finds the stored plan unchanged (the same time stamp, naive on SQLite): not rebuilt
    plans.invalidate(site)
    assert plans.due(site)
    plans.refresh(site)
    assert plans(site)["0"] is walkable


def _ilc_archive_with_map() -> bytes:
    """The small F1 fixture plus a map pair: a lon/lat outline 20 x 10 m with one 5 x 5 m shop."""
    lon0, lat0, dlon, dlat = 120.0, 30.0, 0.0002, 0.0001
    outline = [[[lon0, lat0], [lon0 + dlon, lat0], [lon0 + dlon, lat0 + dlat], [lon0, lat0 + dlat], [lon0, lat0]]]
    shop = [
        [
            [lon0, lat0],
            [lon0 + dlon / 4, lat0],
            [lon0 + dlon / 4, lat0 + dlat / 2],
            [lon0, lat0 + dlat / 2],
            [lon0, lat0],
        ]
    ]
    geo = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {}, "geometry": {"type": "MultiPolygon", "coordinates": [outline]}},
            {"type": "Feature", "properties": {"name": "shop"}, "geometry": {"type": "Polygon", "coordinates": shop}},
        ],
    }
    out = io.BytesIO()
    with tarfile.open(FIXTURES / "ilc_site1_F1_small.tar.xz") as src, tarfile.open(fileobj=out, mode="w") as dst:
        for m in src:
            f = src.extractfile(m) if m.isfile() else None
            dst.addfile(m, f)
        for name, obj in (("geojson_map.json", geo), ("floor_info.json", {"map_info": {"width": 20, "height": 10}})):
            data = json.dumps(obj).encode()
            info = tarfile.TarInfo(f"site1/F1/{name}")
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_ilc_import_stores_the_floor_plan(api: Api) -> None:
    site = api.create_site("ilc-plan")
    r = api.post(
        f"/sites/{site}/surveys",
        files={"file": ("F1.tar", _ilc_archive_with_map())},
        data={"format": "ilc2020"},
        headers=ADMIN,
    )
    assert r.status_code == 201, r.text
    r = api.get(f"/sites/{site}/floors/F1/plan", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["source"] == "ilc2020"
    assert abs(r.json()["area_m2"] - (200.0 - 25.0)) < 0.5
