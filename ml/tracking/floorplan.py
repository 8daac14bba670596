"""Floor plans: the walkable area of a floor as shapely geometry, and a raster of it for per-particle lookups.

A plan is a GeoJSON FeatureCollection of (Multi)Polygons in the site's metric frame; their union is walkable.
The filter asks "is this point walkable?" for a few hundred particles per query, so the geometry is rasterised
once (`Walkable`, `resolution_m` cells) and lookups are array indexing (microseconds), not polygon tests.

What a plan may be (`plan_geometry` raises `PlanError` naming the problem otherwise; the API answers 422):

- coordinates are metres in the site's frame: finite, each within +-`MAX_COORD_M` (25,000 km) of the frame's
  origin, and the plan's bounding box at most `MAX_EXTENT_M` (20 km) each way: a building, not a map in
  millimetres or a typo. The frame may be a projected one (UJIIndoorLoc's surveys are Web Mercator metres, y about
  4,864,900; UTM northings reach 10,000 km, Web Mercator 20,037 km), hence the wide first bound;
- at most `MAX_VERTICES` coordinates in all (geometry coordinates only: `properties` and other members do not
  count), and at most `MAX_EDGE_PAIRS` pairs of edges whose bounding boxes overlap, other than edges that share a
  vertex. Shapely's validity check, repair and union take time growing with those pairs (a star of thousands of
  thin spikes, outlines that cross each other hundreds of times: seconds to minutes). The nine ILC 2020 floor
  maps (outline and shops) have 356 to 15,988, their walkable areas 131 to 1,185, a grid of 1,000 touching rooms
  none. At the limit the slowest shapes measured (a ring crossing itself 50,000 times, 111 strips across 111
  others) take 1-2 s to check, repair and rasterise on a loaded 2-core machine, in a worker thread;
- walkable area at least `MIN_AREA_M2` (1 m^2).

Invalid polygons are repaired with shapely's `make_valid` (method "structure"), ring by ring: the walkable area of
a polygon is its shell's area minus its holes' areas, so a hole outside its shell neither adds nor removes
anything, and a hole covering its shell leaves nothing. Valid polygons are used as they are.

The raster is filled row by row (the edges crossing each row of cell centres, sorted: even-odd between them), so
its cost grows with the cells and the edge crossings, both capped (`MAX_CELLS`, `MAX_CROSSINGS`: a plan over
either is rasterised more coarsely). A cell is walkable when its centre is inside the area; a centre exactly on
the boundary is outside (as `shapely.contains_xy` has it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import shapely
from shapely.errors import GEOSException
from shapely.geometry import Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry

MAX_COORD_M = 25_000_000.0  # every coordinate within +-25,000 km of the site frame's origin
MAX_EXTENT_M = 20_000.0  # the plan's bounding box at most 20 km each way
MIN_AREA_M2 = 1.0
MAX_VERTICES = 50_000
MAX_EDGE_PAIRS = 50_000
DEFAULT_RESOLUTION_M = 0.5
MAX_CELLS = 4_000_000  # a plan bigger than this is rasterised more coarsely
MAX_CROSSINGS = 1_000_000  # edge crossings of the rows of cell centres, likewise


class PlanError(ValueError):
    """The plan is not a usable GeoJSON FeatureCollection of polygons."""


def plan_geometry(fc: Any) -> BaseGeometry:
    """Union of the collection's polygons (a valid Polygon or MultiPolygon); PlanError names what is wrong."""
    if not isinstance(fc, dict) or fc.get("type") != "FeatureCollection" or not isinstance(fc.get("features"), list):
        raise PlanError("a plan is a GeoJSON FeatureCollection: {'type': 'FeatureCollection', 'features': [...]}")
    if not fc["features"]:
        raise PlanError("the plan has no features")
    geoms = []
    for i, f in enumerate(fc["features"]):
        geom = f.get("geometry") if isinstance(f, dict) else None
        if not isinstance(geom, dict) or geom.get("type") not in ("Polygon", "MultiPolygon"):
            raise PlanError(f"features[{i}]: geometry must be a Polygon or MultiPolygon (walkable area, metres)")
        geoms.append(geom)
    n = sum(_positions(g.get("coordinates"), 2 if g["type"] == "Polygon" else 3) for g in geoms)
    if n > MAX_VERTICES:
        raise PlanError(f"{n} vertices; the limit is {MAX_VERTICES}")
    shapes = np.array([_shape(i, g) for i, g in enumerate(geoms)], dtype=object)
    _check_coordinates(shapes)
    polys = _polygons(shapes)
    _check_extent(polys)
    pairs = edge_pairs(polys, MAX_EDGE_PAIRS)
    if pairs > MAX_EDGE_PAIRS:
        raise PlanError(
            f"too intricate: more than {MAX_EDGE_PAIRS} pairs of edges cross or lie close together (thin spikes, "
            "or outlines crossing each other many times); merge overlapping polygons or simplify the outline"
        )
    try:
        u = _union(polys)
    except GEOSException as e:  # after the checks above this should not happen; still a 422, not a 500
        raise PlanError(f"the geometry could not be processed ({e})") from None
    if u.is_empty:
        raise PlanError("the plan's walkable area is empty (no polygon has an area outside its holes)")
    if u.area < MIN_AREA_M2:
        raise PlanError(f"the plan's walkable area is {u.area:.3g} m^2; at least {MIN_AREA_M2:g} m^2 is needed")
    return u


def _positions(coords: Any, depth: int) -> int:
    """How many positions a Polygon's (depth 2) or MultiPolygon's (depth 3) coordinates hold."""
    if not isinstance(coords, list | tuple):
        return 0
    if depth == 1:
        return len(coords)
    return sum(_positions(c, depth - 1) for c in coords)


def _shape(i: int, geom: dict[str, Any]) -> BaseGeometry:
    try:
        with np.errstate(invalid="ignore"):  # NaN coordinates are named by `_check_coordinates`
            return shape(geom)
    except Exception as e:  # shapely raises several types for malformed coordinates
        raise PlanError(f"features[{i}]: malformed coordinates ({e})") from None


def _check_coordinates(shapes: np.ndarray) -> None:
    """Finite, and within `MAX_COORD_M` of the origin; the first feature that is not is named."""
    xy, feature = shapely.get_coordinates(shapes, return_index=True)
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        i = feature[np.argmax(bad)]
        raise PlanError(f"features[{i}]: coordinates must be finite numbers (no NaN or Infinity)")
    far = np.abs(xy).max(axis=1) if len(xy) else xy[:, 0]
    if len(far) and far.max() > MAX_COORD_M:
        k = int(np.argmax(far > MAX_COORD_M))
        raise PlanError(
            f"features[{feature[k]}]: a coordinate is {far[k]:.4g} m from the site's origin; plan coordinates "
            f"are metres in the site's frame, within +-{MAX_COORD_M:.4g}"
        )


def _check_extent(polys: np.ndarray) -> None:
    x0, y0, x1, y1 = shapely.total_bounds(polys)
    w, h = x1 - x0, y1 - y0
    if w > MAX_EXTENT_M or h > MAX_EXTENT_M:
        raise PlanError(
            f"the plan spans {w:.0f} x {h:.0f} m; a floor plan spans at most {MAX_EXTENT_M:.0f} m each way "
            "(coordinates are metres)"
        )


def valid_area(geom: BaseGeometry) -> BaseGeometry:
    """`geom`'s polygons as one valid area: `geom` itself when valid, else the union of its polygons, each invalid
    one repaired ring by ring (`_repaired`). Callers bound the work first (`edge_pairs`)."""
    return geom if geom.is_valid else _union(_polygons(geom))


def _union(polys: np.ndarray) -> BaseGeometry:
    """The union of the polygons (a Polygon, MultiPolygon or empty), invalid ones repaired first."""
    bad = ~shapely.is_valid(polys)
    polys = polys.copy()
    polys[bad] = [_repaired(p) for p in polys[bad]]
    u = shapely.union_all(polys)
    return u if u.geom_type in ("Polygon", "MultiPolygon") else shapely.union_all(_polygons(u))


def _polygons(geoms: Any) -> np.ndarray:
    """The Polygons among the parts of `geoms` (lines and points have no area)."""
    parts = shapely.get_parts(geoms)
    return parts[shapely.get_type_id(parts) == shapely.GeometryType.POLYGON]


def _repaired(p: Polygon) -> BaseGeometry:
    """An invalid polygon as a valid area: its shell's area minus its holes' (each ring made valid on its own)."""
    rings = shapely.polygons([p.exterior, *p.interiors])
    fixed = shapely.make_valid(rings, method="structure", keep_collapsed=False)
    return fixed[0].difference(shapely.union_all(fixed[1:])) if len(fixed) > 1 else fixed[0]


def _edges(polys: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every ring edge of the polygons: start and end points (n x 2 each)."""
    xy, ring = shapely.get_coordinates(shapely.get_rings(polys), return_index=True)
    same = ring[1:] == ring[:-1]
    return xy[:-1][same], xy[1:][same]


def edge_pairs(polys: Any, limit: int) -> int:
    """How many pairs of the polygons' edges have overlapping bounding boxes, not counting edges that share a
    vertex; counted with an STRtree in chunks, and stopped soon after `limit` is passed (the cost stays about
    linear in the edges plus `limit`, however many pairs there are)."""
    a, b = _edges(_polygons(polys))
    n = len(a)
    if n == 0:
        return 0
    segs = shapely.linestrings(np.stack([a, b], axis=1))
    tree = shapely.STRtree(segs)
    found, i, step = 0, 0, 64
    while i < n:
        j = min(n, i + step)
        q, t = tree.query(segs[i:j])
        q = q + i
        later = t > q
        q, t = q[later], t[later]
        touch = (
            (a[q] == a[t]).all(axis=1)
            | (a[q] == b[t]).all(axis=1)
            | (b[q] == a[t]).all(axis=1)
            | (b[q] == b[t]).all(axis=1)
        )
        found += int(len(q) - touch.sum())
        if found > limit:
            break
        per = max(1.0, 2.0 * len(q) / (j - i))  # candidates per edge queried (each pair is seen from both sides)
        step = int(min(65_536, max(64, (limit - found + 1) / per)))
        i = j
    return found


def walkable_collection(geom: BaseGeometry, properties: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "properties": properties or {"walkable": True}, "geometry": mapping(geom)}],
    }


class Walkable:
    """A rasterised walkable area: `contains(xy)` for many points at once."""

    def __init__(self, geom: BaseGeometry, resolution_m: float = DEFAULT_RESOLUTION_M) -> None:
        if geom.is_empty or not all(math.isfinite(v) for v in geom.bounds):
            raise PlanError("the walkable area is empty or not finite")
        x0, y0, x1, y1 = geom.bounds
        a, b = _edges(_polygons(geom))
        lo, hi = np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1])
        res = float(resolution_m)
        while True:
            if ((x1 - x0) / res + 1) * ((y1 - y0) / res + 1) <= MAX_CELLS:
                ny = math.ceil((y1 - y0) / res) + 1
                cy = y0 + (np.arange(ny) + 0.5) * res
                rows = np.searchsorted(cy, hi) - np.searchsorted(cy, lo)
                if int(rows.sum()) <= MAX_CROSSINGS:
                    break
            res *= 2
        self.res = res
        self.x0, self.y0 = x0, y0
        nx = math.ceil((x1 - x0) / res) + 1
        cx = x0 + (np.arange(nx) + 0.5) * res
        self.grid = _fill(a, b, cx, cy)
        self.area_m2 = float(geom.area)

    @classmethod
    def from_collection(cls, fc: Any, resolution_m: float = DEFAULT_RESOLUTION_M) -> Walkable:
        return cls(plan_geometry(fc), resolution_m)

    def contains(self, xy: np.ndarray) -> np.ndarray:
        ix = np.floor((xy[:, 0] - self.x0) / self.res).astype(np.int64)
        iy = np.floor((xy[:, 1] - self.y0) / self.res).astype(np.int64)
        ny, nx = self.grid.shape
        ok = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        out = np.zeros(len(xy), dtype=bool)
        out[ok] = self.grid[iy[ok], ix[ok]]
        return out


def _fill(a: np.ndarray, b: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """Which cell centres (cx x cy) lie inside the rings with edges a -> b (even-odd: a valid polygonal area).

    An edge crosses row j when min(y) <= cy[j] < max(y) (half-open, so a vertex on the row counts once and a
    horizontal edge never); the row's crossings, sorted, pair up into runs, and the centres strictly inside a run
    are inside. Centres on a horizontal edge lying on their row are boundary: outside."""
    nx, ny = len(cx), len(cy)
    lo, hi = np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1])
    j0, j1 = np.searchsorted(cy, lo), np.searchsorted(cy, hi)
    rows = j1 - j0
    edge = np.repeat(np.arange(len(a)), rows)
    row = j0[edge] + (np.arange(len(edge)) - np.repeat(np.cumsum(rows) - rows, rows))
    xa, ya, xb, yb = a[edge, 0], a[edge, 1], b[edge, 0], b[edge, 1]
    x = xa + (cy[row] - ya) * (xb - xa) / (yb - ya)
    order = np.lexsort((x, row))
    row, x = row[order], x[order]
    run, start, end = row[0::2], x[0::2], x[1::2]
    first = np.searchsorted(cx, start, side="right")  # first centre > start
    stop = np.searchsorted(cx, end, side="left")  # first centre >= end
    width = nx + 1
    diff = np.bincount(run * width + first, minlength=ny * width) - np.bincount(
        run * width + stop, minlength=ny * width
    )
    grid = np.cumsum(diff.reshape(ny, width)[:, :nx], axis=1) > 0
    flat = np.flatnonzero(a[:, 1] == b[:, 1])
    r = np.searchsorted(cy, a[flat, 1])
    keep = r < ny
    flat, r = flat[keep], r[keep]
    keep = cy[r] == a[flat, 1]
    if keep.any():
        flat, r = flat[keep], r[keep]
        xl, xr = np.minimum(a[flat, 0], b[flat, 0]), np.maximum(a[flat, 0], b[flat, 0])
        first, stop = np.searchsorted(cx, xl, side="left"), np.searchsorted(cx, xr, side="right")
        diff = np.bincount(r * width + first, minlength=ny * width) - np.bincount(
            r * width + stop, minlength=ny * width
        )
        grid &= np.cumsum(diff.reshape(ny, width)[:, :nx], axis=1) <= 0
    return grid
