"""Floor plans: the walkable area of a floor as shapely geometry, and a raster of it for per-particle lookups.

A plan is a GeoJSON FeatureCollection of (Multi)Polygons in the site's metric frame; their union is walkable.
The filter asks "is this point walkable?" for a few hundred particles per query, so the geometry is rasterised
once (`Walkable`, `resolution_m` cells) and lookups are array indexing (microseconds), not polygon tests.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import shapely
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

MAX_CELLS = 4_000_000  # a plan bigger than this is rasterised more coarsely


class PlanError(ValueError):
    """The plan is not a usable GeoJSON FeatureCollection of polygons."""


def plan_geometry(fc: Any) -> BaseGeometry:
    """Union of the collection's polygons; PlanError names what is wrong."""
    if not isinstance(fc, dict) or fc.get("type") != "FeatureCollection" or not isinstance(fc.get("features"), list):
        raise PlanError("a plan is a GeoJSON FeatureCollection: {'type': 'FeatureCollection', 'features': [...]}")
    polys = []
    for i, f in enumerate(fc["features"]):
        geom = f.get("geometry") if isinstance(f, dict) else None
        if not isinstance(geom, dict) or geom.get("type") not in ("Polygon", "MultiPolygon"):
            raise PlanError(f"features[{i}]: geometry must be a Polygon or MultiPolygon (walkable area, metres)")
        try:
            g = shape(geom)
        except Exception as e:  # shapely raises several types for malformed coordinates
            raise PlanError(f"features[{i}]: malformed coordinates ({e})") from None
        if not g.is_valid:
            g = shapely.make_valid(g)
        polys.append(g)
    if not polys:
        raise PlanError("the plan has no features")
    u = shapely.union_all(polys)
    if u.is_empty or u.area <= 0:
        raise PlanError("the plan's walkable area is empty")
    b = u.bounds
    if not all(math.isfinite(v) for v in b):
        raise PlanError("coordinates must be finite")
    return u


def walkable_collection(geom: BaseGeometry, properties: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "properties": properties or {"walkable": True}, "geometry": mapping(geom)}],
    }


class Walkable:
    """A rasterised walkable area: `contains(xy)` for many points at once."""

    def __init__(self, geom: BaseGeometry, resolution_m: float = 0.5) -> None:
        x0, y0, x1, y1 = geom.bounds
        res = float(resolution_m)
        while ((x1 - x0) / res + 1) * ((y1 - y0) / res + 1) > MAX_CELLS:
            res *= 2
        self.res = res
        self.x0, self.y0 = x0, y0
        nx, ny = math.ceil((x1 - x0) / res) + 1, math.ceil((y1 - y0) / res) + 1
        cx = x0 + (np.arange(nx) + 0.5) * res
        cy = y0 + (np.arange(ny) + 0.5) * res
        gx, gy = np.meshgrid(cx, cy)
        shapely.prepare(geom)
        self.grid = shapely.contains_xy(geom, gx.ravel(), gy.ravel()).reshape(ny, nx)
        self.area_m2 = float(geom.area)

    @classmethod
    def from_collection(cls, fc: Any, resolution_m: float = 0.5) -> Walkable:
        return cls(plan_geometry(fc), resolution_m)

    def contains(self, xy: np.ndarray) -> np.ndarray:
        ix = np.floor((xy[:, 0] - self.x0) / self.res).astype(np.int64)
        iy = np.floor((xy[:, 1] - self.y0) / self.res).astype(np.int64)
        ny, nx = self.grid.shape
        ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        out = np.zeros(len(xy), dtype=bool)
        out[ok] = self.grid[iy[ok], ix[ok]]
        return out
