"""Tracking: PDR from sensor windows, the particle filter, the smoother, floor plans (synthetic walks)."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest

from ml.data.floorplans import ilc_walkable
from ml.tracking.filter import FilterConfig, Fix, NoPosition, TrackState, step
from ml.tracking.floorplan import PlanError, Walkable, plan_geometry, walkable_collection
from ml.tracking.motion import MotionState, displacement, rotation_heading
from ml.tracking.smooth import smooth_history, smoothed_points
from ml.types import SensorData

RATE = 50.0


def walk_window(
    heading: float, steps_per_s: float = 2.0, seconds: float = 1.0, rotation: bool = True, t0: float = 0.0
) -> SensorData:
    """A phone held flat, top edge towards `heading` (radians from east), bobbing `steps_per_s` times a second."""
    n = int(RATE * seconds)
    t = t0 + np.arange(n) / RATE
    accel = np.zeros((n, 3), dtype=np.float32)
    accel[:, 2] = 9.81 + 3.0 * np.sin(2 * np.pi * steps_per_s * t - np.pi / 2)
    half = (heading - np.pi / 2) / 2  # yaw of the device y axis away from north
    rot = np.tile([0.0, 0.0, math.sin(half), math.cos(half)], (n, 1)).astype(np.float32)
    # magnetometer for the compass fallback: field pointing north and down, in device axes
    yaw = heading - np.pi / 2
    north_dev = np.array([math.sin(yaw), math.cos(yaw), 0.0])  # world north seen from the rotated device
    mag = np.tile(30.0 * north_dev + [0.0, 0.0, -40.0], (n, 1)).astype(np.float32)
    return SensorData(
        rate_hz=RATE, accel=accel, gyro=np.zeros((n, 3), np.float32), mag=mag, rotation=rot if rotation else None
    )


@pytest.mark.parametrize("heading_deg", [0.0, 90.0, 200.0])
def test_rotation_vector_heading(heading_deg: float) -> None:
    h = math.radians(heading_deg)
    w = walk_window(h)
    assert w.rotation is not None
    got = rotation_heading(w.rotation.astype(np.float64))
    assert np.allclose(np.angle(np.exp(1j * (got - h))), 0.0, atol=1e-5)
    # the [x, y, z] form (w implied) gives the same heading
    got3 = rotation_heading(w.rotation[:, :3].astype(np.float64) * np.sign(w.rotation[:, 3:4]))
    assert np.allclose(np.angle(np.exp(1j * (got3 - h))), 0.0, atol=1e-5)


@pytest.mark.parametrize("rotation", [True, False])
def test_steps_and_direction_over_consecutive_windows(rotation: bool) -> None:
    h = math.radians(30.0)
    state = MotionState()
    total = np.zeros(2)
    steps = 0
    for k in range(10):
        d = displacement(walk_window(h, rotation=rotation, t0=float(k)), state)
        total += (d.dx, d.dy)
        steps += d.steps
    assert 18 <= steps <= 21  # 2 steps a second for 10 s, none counted twice across window edges
    assert abs(math.atan2(total[1], total[0]) - h) < math.radians(3)
    assert 0.3 * steps <= np.hypot(*total) <= 1.4 * steps


def test_standing_still_has_no_steps() -> None:
    n = int(RATE)
    still = SensorData(rate_hz=RATE, accel=np.tile([0.0, 0.0, 9.81], (n, 1)).astype(np.float32))
    d = displacement(still, MotionState())
    assert d.steps == 0 and d.dx == 0.0 and d.dy == 0.0


def _synthetic_walk(seed: int, noise_m: float = 5.0, seconds: int = 60):
    """East for 30 s, then north: truth at 1 Hz, a noisy WiFi fix every 2 s, PDR windows every second."""
    rng = np.random.default_rng(seed)
    truth, windows, fixes = [], [], []
    pos = np.array([10.0, 10.0])
    for k in range(seconds):
        heading = 0.0 if k < 30 else math.pi / 2
        if k:
            pos = pos + 1.2 * np.array([math.cos(heading), math.sin(heading)])
        truth.append(pos.copy())
        windows.append(walk_window(heading, t0=float(k)) if k else None)
        if k % 2 == 0:
            e = rng.normal(0, noise_m, 2)
            fixes.append(Fix(pos[0] + e[0], pos[1] + e[1], "1", noise_m))
        else:
            fixes.append(None)
    return np.array(truth), windows, fixes


def _run(windows, fixes, cfg=None, plans=None, keys=None):
    cfg = cfg or FilterConfig()
    state = None
    est = []
    for k, (w, f) in enumerate(zip(windows, fixes, strict=True)):
        key = (keys[k] if keys else str(k)) if f is not None else None
        state, e = step(state, seed=7, t_ms=1000 * k, sensors=w, fix=f, scan_key=key, plans=plans, cfg=cfg)
        est.append((e.x, e.y))
    return state, np.array(est)


def test_filter_beats_single_fixes_and_smoother_beats_filter() -> None:
    single, causal, smooth = [], [], []
    for seed in range(3):
        truth, windows, fixes = _synthetic_walk(seed)
        last = None
        for k, f in enumerate(fixes):
            last = f or last
            single.append(math.hypot(last.x - truth[k, 0], last.y - truth[k, 1]))
        state, est = _run(windows, fixes)
        causal.extend(np.hypot(*(est - truth).T))
        sm = np.array([(p.x, p.y) for p in smoothed_points(state)])
        smooth.extend(np.hypot(*(sm - truth).T))
    assert np.mean(causal) < 0.8 * np.mean(single)
    assert np.mean(smooth) < np.mean(causal)


def test_same_scan_again_is_not_a_new_measurement() -> None:
    truth, windows, fixes = _synthetic_walk(0)
    wild = Fix(500.0, 500.0, "1", 5.0)
    base_fixes = [fixes[0]] + [None] * 9
    many = [fixes[0]] + [wild] * 9
    _, a = _run(windows[:10], many, keys=["first"] + ["same"] * 9)  # one scan re-sent nine times
    _, b = _run(windows[:10], [fixes[0], wild] + [None] * 8)
    assert np.allclose(a, b)
    _, c = _run(windows[:10], base_fixes)
    assert np.hypot(*(c[-1] - truth[9])) < 10


def test_disagreeing_fixes_restart_the_cloud() -> None:
    truth, windows, fixes = _synthetic_walk(0, noise_m=1.0, seconds=40)
    moved = [None if f is None else Fix(f.x + 80.0, f.y, f.floor, 1.0) if k >= 10 else f for k, f in enumerate(fixes)]
    _, est = _run(windows, moved)
    assert abs(est[-1, 0] - (truth[-1, 0] + 80.0)) < 8


def test_floor_changes_after_consecutive_votes() -> None:
    _truth, windows, fixes = _synthetic_walk(0, noise_m=2.0, seconds=12)
    other = [None if f is None else Fix(f.x, f.y, "2" if k >= 6 else "1", f.error_m) for k, f in enumerate(fixes)]
    state = None
    floors = []
    for k, (w, f) in enumerate(zip(windows, other, strict=True)):
        state, e = step(state, seed=1, t_ms=1000 * k, sensors=w, fix=f, scan_key=str(k) if f else None)
        floors.append(e.floor)
    assert floors[6] == "1"  # one vote is not enough (hysteresis)
    assert floors[8:] == ["2"] * 4


def test_a_long_gap_restarts_the_track_at_the_next_fix() -> None:
    s, _ = step(None, seed=0, t_ms=0, sensors=None, fix=Fix(0.0, 0.0, "1", 3.0), scan_key="a")
    s, e = step(s, seed=0, t_ms=10**15, sensors=None, fix=None, scan_key=None)  # years later, no fix
    assert math.isfinite(e.x) and e.error_m < 1000  # the motion noise stops growing after max_gap_s
    s, e = step(s, seed=0, t_ms=10**15 + 1000, sensors=None, fix=Fix(200.0, 50.0, "1", 3.0), scan_key="b")
    assert math.hypot(e.x - 200.0, e.y - 50.0) < 10  # the walker may be anywhere: the fix restarts the cloud
    s, e = step(s, seed=0, t_ms=10**15 + 2000, sensors=None, fix=Fix(201.0, 50.0, "1", 3.0), scan_key="c")
    assert not s.lost and math.hypot(e.x - 201.0, e.y - 50.0) < 10


def test_window_streams_of_different_lengths() -> None:
    """Each modality has its own sample count (a 10.5 s window of accelerometer with one rotation sample, two
    magnetometer or gyroscope samples): a finite displacement, never an exception or NaN."""
    walk = np.array([[0.0, 0.0, 9.81 + 3.0 * math.sin(2 * math.pi * 2 * i / 10 - math.pi / 2)] for i in range(105)])
    cases = [
        SensorData(rate_hz=10.0, accel=walk, rotation=np.array([[0.0, 0.0, 0.0, 1.0]])),
        SensorData(rate_hz=10.0, accel=walk, mag=np.tile([20.0, 0.0, -40.0], (105, 1)), gyro=np.zeros((2, 3))),
        SensorData(rate_hz=10.0, accel=walk, mag=np.tile([20.0, 0.0, -40.0], (2, 1))),
    ]
    for sd in cases:
        d = displacement(sd, MotionState())
        assert math.isfinite(d.dx) and math.isfinite(d.dy) and d.steps > 0


def test_first_query_needs_a_fix_and_motion_alone_continues() -> None:
    with pytest.raises(NoPosition):
        step(None, seed=0, t_ms=0, sensors=walk_window(0.0), fix=None, scan_key=None)
    s, e0 = step(None, seed=0, t_ms=0, sensors=None, fix=Fix(0.0, 0.0, "1", 3.0), scan_key="a")
    for k in range(1, 6):
        s, e = step(s, seed=0, t_ms=1000 * k, sensors=walk_window(0.0, t0=float(k)), fix=None, scan_key=None)
    assert e.x > 3.0 and abs(e.y) < 2.0  # walked east about 1.2 m a second
    assert e.error_m > e0.error_m  # without fixes the cloud spreads


def test_state_round_trips_through_bytes() -> None:
    _, windows, fixes = _synthetic_walk(1, seconds=10)
    state, _ = _run(windows, fixes)
    back = TrackState.from_bytes(state.to_bytes())
    assert np.array_equal(back.particles, state.particles)
    assert np.array_equal(back.history, state.history, equal_nan=True)
    assert back.floors == state.floors and back.t_ms == state.t_ms and back.last_scan == state.last_scan
    # and continues identically
    w = walk_window(0.0, t0=10.0)
    a = step(state, seed=7, t_ms=11_000, sensors=w, fix=None, scan_key=None)[1]
    b = step(back, seed=7, t_ms=11_000, sensors=w, fix=None, scan_key=None)[1]
    assert (a.x, a.y) == pytest.approx((b.x, b.y))
    with pytest.raises(ValueError):
        TrackState.from_bytes(b"\x05\x00\x00\x00" + b'{"v":9}')


def test_smoother_segments_are_independent() -> None:
    h = np.zeros((4, 17))
    h[:, 0] = np.arange(4) * 1000
    h[:, 1] = [0.0, 1.0, 50.0, 51.0]
    h[:, 12:] = np.nan
    h[:, 4] = h[:, 6] = 4.0
    h[:, 9] = 0.1
    h[2:, 10] = 1  # a restart between point 1 and point 2
    out = smooth_history(h)
    assert out[1, 0] < 5.0  # not dragged towards the new segment


def test_plan_raster_and_soft_constraint() -> None:
    corridor = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {},
                "geometry": {"type": "Polygon", "coordinates": [[[0, 8], [100, 8], [100, 12], [0, 12], [0, 8]]]},
            }
        ],
    }
    plan = Walkable.from_collection(corridor)
    assert plan.contains(np.array([[50.0, 10.0], [50.0, 20.0], [-5.0, 10.0]])).tolist() == [True, False, False]
    # a fix pulled off the corridor: the plan keeps the estimate nearer the corridor
    _truth, windows, fixes = _synthetic_walk(2, seconds=30)
    off = [None if f is None else Fix(f.x, f.y + 6.0, "1", 5.0) for f in fixes]
    _, with_plan = _run(windows, off, plans={"1": plan})
    _, without = _run(windows, off)
    assert np.mean(np.abs(with_plan[:, 1] - 10.0)) < np.mean(np.abs(without[:, 1] - 10.0))


def test_plan_validation() -> None:
    with pytest.raises(PlanError):
        plan_geometry({"type": "FeatureCollection", "features": []})
    with pytest.raises(PlanError):
        plan_geometry([1, 2])
    g = plan_geometry(
        {
            "type": "FeatureCollection",
            "features": [
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [2, 0], [2, 2], [0, 2], [0, 0]]]},
                }
            ],
        }
    )
    assert g.area == 4.0 and walkable_collection(g)["features"][0]["geometry"]["type"] == "Polygon"


def _fc(*polygons: object, kind: str = "Polygon", **extra: object) -> dict:
    feats = [{"type": "Feature", "properties": {}, "geometry": {"type": kind, "coordinates": c}} for c in polygons]
    return {"type": "FeatureCollection", "features": feats, **extra}


def _square(x0: float, y0: float, side: float) -> list[list[float]]:
    return [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]


def _star(n: int, r_out: float = 700.0, r_in: float = 5.0) -> list[list[float]]:
    """A ring of n/2 thin spikes around a 5 m hub (the fuzz review's plan: valid, but GEOS's validity check and
    the old raster were quadratic in it)."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.where(np.arange(n) % 2 == 0, r_out, r_in)
    ring = np.c_[r * np.cos(t), r * np.sin(t)].tolist()
    return [*ring, ring[0]]


def _string_art(n: int, r: float = 700.0) -> list[list[float]]:
    """A ring whose consecutive vertices are nearly opposite on a circle: every edge crosses most others."""
    t = np.arange(n) * np.pi * (1 - 1 / n)
    ring = np.c_[r * np.cos(t), r * np.sin(t)].tolist()
    return [*ring, ring[0]]


def _strips(n: int) -> list[list[list[list[float]]]]:
    """n thin north-south strips and n east-west ones over them, each its own polygon: n^2 crossings."""
    ns = [[[2 * i, 0], [2 * i + 1, 0], [2 * i + 1, 2 * n], [2 * i, 2 * n], [2 * i, 0]] for i in range(n)]
    ew = [[[0, 2 * j], [2 * n, 2 * j], [2 * n, 2 * j + 1], [0, 2 * j + 1], [0, 2 * j]] for j in range(n)]
    return [[ring] for ring in ns + ew]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_plan_non_finite_coordinates_are_plan_errors(bad: float) -> None:
    # were a shapely GEOSException (a 500): is_valid/make_valid ran on NaN/Inf before any finite check
    with pytest.raises(PlanError, match=r"features\[1\]: coordinates must be finite"):
        plan_geometry(_fc([_square(0, 0, 10)], [[[0, 0], [bad, 0], [10, 10], [0, 0]]]))


@pytest.mark.parametrize("big", [1e308, 1e200, 1e155, 3e7])
def test_plan_coordinates_are_metres_near_the_origin(big: float) -> None:
    # 1e308 gave an area of null and then a raster of inf cells (every session query a 500); 1e155 an infinite
    # area; 1e200 a nonsense one
    ring = [[-big, -big], [big, -big], [big, big], [-big, big], [-big, -big]]
    with pytest.raises(PlanError, match="from the site's origin; plan coordinates are metres"):
        plan_geometry(_fc([ring]))


def test_plan_extent_is_a_building() -> None:
    uji = _square(-7600.0, 4_864_900.0, 50.0)  # UJIIndoorLoc's frame: Web Mercator metres
    assert plan_geometry(_fc([uji])).area == pytest.approx(2500.0)
    with pytest.raises(PlanError, match="spans 30000 x 10 m"):
        plan_geometry(_fc([_square(0, 0, 10)], [_square(29_990, 0, 10)]))
    g = plan_geometry(_fc([_square(0, 0, 10)], [_square(19_990, 0, 10)]))  # 20 km: the largest allowed
    assert g.area == pytest.approx(200.0)
    w = Walkable(g)
    assert w.contains(np.array([[5.0, 5.0], [19_995.0, 5.0], [10_000.0, 5.0]])).tolist() == [True, True, False]


def test_plan_holes_only_take_area_away() -> None:
    shell = _square(0, 0, 10)
    assert plan_geometry(_fc([shell, _square(20, 0, 5)])).area == pytest.approx(100.0)  # hole outside: was 125
    assert plan_geometry(_fc([shell, [[5, 2], [15, 2], [15, 8], [5, 8], [5, 2]]])).area == pytest.approx(70.0)
    with pytest.raises(PlanError, match="walkable area is empty"):
        plan_geometry(_fc([shell, shell]))  # the hole is the shell: was 100 m^2 walkable
    bowtie = [[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]  # a self-crossing ring: both lobes, as before
    assert plan_geometry(_fc([bowtie])).area == pytest.approx(50.0)
    overlapping = _fc([[_square(0, 0, 10)], [_square(5, 5, 10)]], kind="MultiPolygon")
    assert plan_geometry(overlapping).area == pytest.approx(175.0)


def test_plan_walkable_area_is_at_least_a_square_metre() -> None:
    with pytest.raises(PlanError, match=r"walkable area is 1e-18 m\^2; at least 1 m\^2"):
        plan_geometry(_fc([_square(0, 0, 1e-9)]))
    assert plan_geometry(_fc([_square(0, 0, 1)])).area == pytest.approx(1.0)


def test_plan_vertices_are_geometry_coordinates_only() -> None:
    from ml.tracking.floorplan import MAX_VERTICES

    junk = [[float(i), 0.0] for i in range(MAX_VERTICES + 5)]  # not geometry: was counted as vertices
    plan = _fc([_square(0, 0, 10)], extra_points=junk)
    plan["features"][0]["properties"] = {"samples": junk}
    assert plan_geometry(plan).area == pytest.approx(100.0)
    t = np.linspace(0, 2 * np.pi, MAX_VERTICES, endpoint=False)
    ring = np.c_[100 * np.cos(t), 100 * np.sin(t)].tolist()
    with pytest.raises(PlanError, match=f"^{MAX_VERTICES + 1 + 5} vertices; the limit is {MAX_VERTICES}$"):
        plan_geometry(_fc([[*ring, ring[0]]], [_square(0, 0, 1)]))


@pytest.mark.parametrize(
    "plan",
    [
        pytest.param(lambda: _fc([_star(8_000)]), id="star of 4,000 spikes"),
        pytest.param(lambda: _fc([_string_art(400)]), id="self-crossing ring"),
        pytest.param(lambda: _fc(*_strips(300)), id="300 strips across 300 others"),
    ],
)
def test_plan_too_intricate_to_process_is_refused_quickly(plan: object) -> None:
    # The old plan_geometry took them all: over 5 minutes in make_valid on the 400-vertex self-crossing ring, 8 s
    # in union_all on the 600 rectangles crossing 90,000 times (both on a loaded 2-core machine), and minutes in
    # is_valid on the fuzz review's 150,000-vertex star (the same shape as this smaller one).
    import time

    body = plan()  # type: ignore[operator]
    t = time.perf_counter()
    with pytest.raises(PlanError, match="too intricate"):
        plan_geometry(body)
    assert time.perf_counter() - t < 2.0


def test_plan_raster_is_bounded() -> None:
    """Rasterising any geometry costs a bounded time: the 150,000-vertex star of the fuzz review took 87 s on
    the event loop (shapely.contains_xy over 4M cells, each crossing thousands of spikes); coarser cells now."""
    import time

    from shapely.geometry import Polygon

    star = Polygon(_star(150_000))
    t = time.perf_counter()
    w = Walkable(star)
    assert time.perf_counter() - t < 3.0
    assert w.res > 0.5 and w.grid.size <= 4_000_000
    assert w.contains(np.array([[0.0, 0.0], [-700.0, 700.0]])).tolist() == [True, False]  # the hub; a corner


def test_plan_raster_is_shapely_contains_at_cell_centres() -> None:
    """The row-by-row fill answers what shapely.contains_xy answers at every cell centre, boundaries included
    (edges through cell centres: multiples of 0.25 m on 0.5 m cells), so normal plans track exactly as before."""
    import shapely
    from shapely.geometry import Polygon, box

    rng = np.random.default_rng(5)
    for trial in range(120):
        g = shapely.union_all(
            [box(*(rng.integers(0, 40, 2) * 0.25), *(rng.integers(41, 80, 2) * 0.25)) for _ in range(3)]
        )
        x, y = rng.integers(0, 60, 2) * 0.25
        g = g.difference(box(x, y, x + 2.5, y + 1.25))
        if trial % 3 == 0:
            g = shapely.make_valid(Polygon(rng.uniform(0, 20, (10, 2))))
            g = shapely.union_all([p for p in shapely.get_parts(g) if p.geom_type == "Polygon"])
        w = Walkable(g, resolution_m=(0.5, 0.25, 0.3)[trial % 3])
        ny, nx = w.grid.shape
        gx, gy = np.meshgrid(w.x0 + (np.arange(nx) + 0.5) * w.res, w.y0 + (np.arange(ny) + 0.5) * w.res)
        assert (w.grid == shapely.contains_xy(g, gx.ravel(), gy.ravel()).reshape(ny, nx)).all(), trial


def test_ilc_map_with_bad_numbers_is_a_format_error() -> None:
    from ml.data.errors import DataFormatError

    outline = {"type": "Polygon", "coordinates": [_square(120.0, 30.0, 0.001)]}
    shop = {"type": "Polygon", "coordinates": [[[120.0, 30.0], [math.nan, 30.0], [120.0005, 30.0005], [120.0, 30.0]]]}
    with pytest.raises(DataFormatError, match="non-finite"):  # was a GEOSException from make_valid
        ilc_walkable(
            {"features": [{"geometry": outline}, {"geometry": shop}]}, {"map_info": {"width": 20, "height": 10}}
        )
    with pytest.raises(DataFormatError, match="not finite"):
        ilc_walkable({"features": [{"geometry": outline}]}, {"map_info": {"width": math.inf, "height": 10}})
    art = {"type": "Polygon", "coordinates": [(np.array(_string_art(400)) / 1e6 + [120.0, 30.0]).tolist()]}
    with pytest.raises(DataFormatError, match="too intricate"):  # was minutes in make_valid
        ilc_walkable(
            {"features": [{"geometry": outline}, {"geometry": art}]}, {"map_info": {"width": 20, "height": 10}}
        )


def test_ilc_map_to_site_metres() -> None:
    lon0, lat0 = 120.0, 30.0
    outline = [
        [[lon0, lat0], [lon0 + 0.0002, lat0], [lon0 + 0.0002, lat0 + 0.0001], [lon0, lat0 + 0.0001], [lon0, lat0]]
    ]
    shop = [[[lon0, lat0], [lon0 + 0.0001, lat0], [lon0 + 0.0001, lat0 + 0.0001], [lon0, lat0 + 0.0001], [lon0, lat0]]]
    gj = {
        "features": [
            {"geometry": {"type": "MultiPolygon", "coordinates": [outline]}},
            {"geometry": {"type": "Polygon", "coordinates": shop}},
        ]
    }
    walk = ilc_walkable(gj, {"map_info": {"width": 40.0, "height": 10.0}})
    assert walk.bounds == pytest.approx((20.0, 0.0, 40.0, 10.0))  # the west half is a shop
    assert walk.area == pytest.approx(200.0)


def test_memory_store_expires_silent_sessions_and_scopes_by_owner() -> None:
    import time

    from app.services.sessions import MemoryStore, Tracker
    from ml.tracking.replay import scan_key

    tracker = Tracker(MemoryStore(ttl_s=0.05))
    fix = Fix(1.0, 2.0, "1", 3.0)
    tracker.update(owner="a", session_id="s", site_id="x", t_ms=0, sensors=None, fix=fix, scan="k")
    assert tracker.read(owner="a", session_id="s")["points"][0]["x"] == pytest.approx(1.0, abs=5.0)
    from app.errors import Invalid, NotFound

    with pytest.raises(NotFound):
        tracker.read(owner="b", session_id="s")
    with pytest.raises(Invalid):  # time goes forward
        tracker.update(owner="a", session_id="s", site_id="x", t_ms=-1, sensors=None, fix=None, scan=None)
    with pytest.raises(Invalid):  # one site per session
        tracker.update(owner="a", session_id="s", site_id="y", t_ms=5, sensors=None, fix=fix, scan="k")
    time.sleep(0.1)
    with pytest.raises(NotFound):
        tracker.read(owner="a", session_id="s")
    assert scan_key([("b", -50.0), ("a", -60.0)]) == scan_key([("a", -60.0), ("b", -50.0)])
    assert scan_key([]) is None


def test_embedded_file_store_is_shared_by_processes_and_expires(tmp_path: pathlib.Path) -> None:
    """Two stores on one folder stand for two embedded API processes: either continues the other's session."""
    import time

    from app.services.sessions import FileStore

    a, b = FileStore(tmp_path, ttl_s=0.3), FileStore(tmp_path, ttl_s=0.3)
    assert a.update("k", lambda old: (b"one", old)) is None
    assert b.update("k", lambda old: ((old or b"") + b"+two", old)) == b"one"
    assert a.get("k") == b"one+two" and b.get("other") is None
    time.sleep(0.4)
    assert a.get("k") is None  # silent longer than the TTL: no live session
