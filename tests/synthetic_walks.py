"""A synthetic corridor for self-maintenance tests: a survey dense in its west half and sparse in the east, and
walks that go east.

100 m x 20 m, 40 access points with a log-distance path loss and shadowing noise. The survey is dense up to x = 50 m
and has only a point every 12 m on the centre line beyond, so a radio map answers the east half coarsely; walks start
in the west half and head east at 1.2 m/s with a scan every 2 s and a 50 Hz sensor window every second, so their
smoothed tracks (WiFi + PDR) fill the east half with pseudo-labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ml.types import Fingerprint, SensorData, WifiReading

RATE = 50.0
WIDTH, HEIGHT = 100.0, 20.0
PLAN = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "properties": {},
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[0, 0], [WIDTH, 0], [WIDTH, HEIGHT], [0, HEIGHT], [0, 0]]],
            },
        }
    ],
}


@dataclass
class World:
    aps: np.ndarray  # (k, 2)
    names: list[str]
    rng: np.random.Generator

    def scan(self, x: float, y: float, gone: frozenset[str] = frozenset()) -> list[WifiReading]:
        d = np.hypot(self.aps[:, 0] - x, self.aps[:, 1] - y)
        rssi = -35.0 - 25.0 * np.log10(d + 1.0) + self.rng.normal(0, 2.5, len(d))
        return [
            WifiReading(n, round(float(r), 1))
            for n, r in zip(self.names, rssi, strict=True)
            if r > -88.0 and n not in gone
        ]


def world(seed: int = 0, n_aps: int = 40) -> World:
    rng = np.random.default_rng(seed)
    aps = np.column_stack([rng.uniform(0, WIDTH, n_aps), rng.uniform(0, HEIGHT, n_aps)])
    return World(aps, [f"02:00:00:00:{i // 256:02x}:{i % 256:02x}" for i in range(n_aps)], rng)


def survey(w: World, x_dense: float = 50.0) -> list[Fingerprint]:
    """Dense (every 2 m, three lines) up to `x_dense`, sparse beyond (every 12 m, the centre line only)."""
    out = []
    for x in np.arange(1.0, WIDTH, 2.0):
        for y in (4.0, 10.0, 16.0):
            if x > x_dense and (y != 10.0 or (x - 1.0) % 12):
                continue
            for _rep in range(2):  # two scans per point, one survey walk per line
                out.append(Fingerprint(wifi=w.scan(x, y), x=float(x), y=y, floor="0", path=f"line{int(y)}"))
    return out


def window(heading: float, t0: float = 0.0, steps_per_s: float = 2.0) -> SensorData:
    """One second of a phone held flat, top edge towards `heading` (radians from east), walking."""
    n = int(RATE)
    t = t0 + np.arange(n) / RATE
    accel = np.zeros((n, 3), dtype=np.float32)
    accel[:, 2] = 9.81 + 3.0 * np.sin(2 * np.pi * steps_per_s * t - np.pi / 2)
    half = (heading - np.pi / 2) / 2
    rot = np.tile([0.0, 0.0, math.sin(half), math.cos(half)], (n, 1)).astype(np.float32)
    return SensorData(rate_hz=RATE, accel=accel, rotation=rot)


@dataclass
class WalkSample:
    t_ms: int
    x: float
    y: float
    wifi: list[WifiReading]  # empty: no new scan this second
    sensors: SensorData | None


def walk(
    w: World, start_x: float, y: float, seconds: int, t0_ms: int, gone: frozenset[str] = frozenset()
) -> list[WalkSample]:
    """East along the corridor at `y`, 1.2 m/s (two 0.6 m steps a second): a query every second."""
    out = []
    x = start_x
    for k in range(seconds):
        if k:
            x = min(x + 1.2, WIDTH - 1)
        scan = w.scan(x, y, gone) if k % 2 == 0 else []
        out.append(WalkSample(t0_ms + 1000 * k, x, y, scan, window(0.0, float(k)) if k else None))
    return out


def walks(w: World, n: int, seed: int = 1, gone: frozenset[str] = frozenset()) -> list[list[WalkSample]]:
    rng = np.random.default_rng(seed)
    t0 = 1_700_000_000_000
    return [
        walk(w, float(rng.uniform(5, 30)), float(rng.choice([4.0, 10.0, 16.0])), 60, t0 + i * 120_000, gone)
        for i in range(n)
    ]


def scored(w: World, n: int = 120, seed: int = 2, x_min: float = 0.0) -> list[Fingerprint]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x, y = float(rng.uniform(x_min, WIDTH - 1)), float(rng.choice([4.0, 10.0, 16.0]))
        out.append(Fingerprint(wifi=w.scan(x, y), x=x, y=y, floor="0"))
    return out
