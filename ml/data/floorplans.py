"""Floor plans shipped with ILC 2020 floor archives: geojson_map.json + floor_info.json -> walkable area in metres.

The geojson is WGS84 lon/lat. Its first feature is the floor outline; the others are shops. The floor frame of
the traces has x east in [0, width] and y north in [0, height] (floor_info.json) with its origin at the
south-west corner of the outline's bounding box, so the outline's bounding box is mapped linearly onto
[0, width] x [0, height]. Walkable = outline minus shops (this holds 99.5% of the ILC waypoints).
"""

from __future__ import annotations

import json
import math
import os
import tarfile
from typing import Any

import numpy as np
import shapely
from shapely.errors import GEOSException
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from ml.data.errors import DataFormatError
from ml.tracking.floorplan import MAX_EDGE_PAIRS, edge_pairs, valid_area, walkable_collection


def ilc_walkable(geojson: Any, floor_info: Any, name: str = "geojson_map.json") -> BaseGeometry:
    try:
        feats = geojson["features"]
        info = floor_info["map_info"]
        width, height = float(info["width"]), float(info["height"])
        with np.errstate(invalid="ignore"):  # NaN coordinates are refused below, after the transform
            outline = shape(feats[0]["geometry"])
            shops = [shape(f["geometry"]) for f in feats[1:] if f.get("geometry")]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as e:
        raise DataFormatError(f"not an ILC floor map ({type(e).__name__}: {e})", name) from None
    lon0, lat0, lon1, lat1 = outline.bounds
    if not (lon1 > lon0 and lat1 > lat0 and width > 0 and height > 0):
        raise DataFormatError("degenerate floor outline or size", name)
    sx, sy = width / (lon1 - lon0), height / (lat1 - lat0)
    if not all(math.isfinite(v) for v in (lon0, lat0, sx, sy)):
        raise DataFormatError("floor outline or size is not finite", name)

    def to_m(geom: BaseGeometry) -> BaseGeometry:
        return shapely.transform(geom, lambda c: (c - [lon0, lat0]) * [sx, sy])

    # Checked before any shapely operation: NaN/Infinity make GEOS raise, and repairing or subtracting outlines
    # that cross each other thousands of times takes minutes (the limits are the API plans', ml/tracking/floorplan).
    outline_m, shops_m = to_m(outline), [to_m(s) for s in shops]
    everything = np.array([outline_m, *shops_m], dtype=object)
    if not np.isfinite(shapely.get_coordinates(everything)).all():
        raise DataFormatError("non-finite coordinates in the floor map", name)
    if edge_pairs(everything, MAX_EDGE_PAIRS) > MAX_EDGE_PAIRS:
        raise DataFormatError(f"floor map too intricate (more than {MAX_EDGE_PAIRS} edge pairs cross or touch)", name)
    try:
        walk = valid_area(outline_m)
        if shops_m:
            walk = walk.difference(shapely.union_all([valid_area(s) for s in shops_m]))
    except GEOSException as e:
        raise DataFormatError(f"unusable floor map geometry ({e})", name) from None
    return walk


def ilc_plan_collection(geojson_bytes: bytes, floor_info_bytes: bytes, name: str) -> dict[str, Any]:
    """The walkable FeatureCollection (site metres) of one ILC floor archive's two map files."""
    try:
        gj, fi = json.loads(geojson_bytes), json.loads(floor_info_bytes)
    except ValueError as e:
        raise DataFormatError(f"map file is not JSON ({e})", name) from None
    return walkable_collection(ilc_walkable(gj, fi, name), {"walkable": True, "source": "ilc2020"})


def read_ilc_plans(path: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """{floor: walkable FeatureCollection} for every `<floor>/geojson_map.json` + `floor_info.json` pair in an ILC
    floor archive (or a single trace file: none). The floor is the maps' folder name, as for the traces."""
    found: dict[str, dict[str, bytes]] = {}
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            head = f.read(512)
        if not (head.startswith((b"\xfd7zXZ\x00", b"\x1f\x8b", b"BZh")) or head[257:262] == b"ustar"):
            return {}
        with tarfile.open(name, mode="r|*") as tar:
            for m in tar:
                base = m.name.rsplit("/", 1)[-1]
                if not m.isfile() or base not in ("geojson_map.json", "floor_info.json") or "/" not in m.name:
                    continue
                if m.size > 64 << 20:
                    raise DataFormatError("map file larger than 64 MiB", m.name)
                fobj = tar.extractfile(m)
                floor = m.name.rsplit("/", 2)[-2]
                found.setdefault(floor, {})[base] = fobj.read() if fobj is not None else b""
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataFormatError(f"unreadable archive ({e})", name) from None
    return {
        floor: ilc_plan_collection(files["geojson_map.json"], files["floor_info.json"], f"{floor}/geojson_map.json")
        for floor, files in sorted(found.items())
        if len(files) == 2
    }
