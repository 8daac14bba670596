"""JSON Lines surveys: one API "fingerprint object" (see DESIGN.md) per line.

`fingerprint_from_json` / `fingerprint_to_json` are the single mapping between
that JSON shape and `Fingerprint`, so the upload endpoint, the JSONL reader and
the fixtures cannot drift apart. Beyond the API object, the optional keys
"user" and "extra" are read and written so a UJIIndoorLoc or ILC survey
survives a round trip; unknown keys are ignored (forward compatibility).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

from ml.data._io import Source, open_text, source_name
from ml.data.bssid import check_rssi, normalize_bssid
from ml.data.errors import DataFormatError
from ml.data.limits import check_fingerprint
from ml.types import Fingerprint, SensorData, WifiReading

SENSOR_KEYS = ("accel", "gyro", "mag")


def read_jsonl(source: Source) -> Iterator[Fingerprint]:
    """Stream fingerprints from a JSONL path or text/binary file object; blank lines are skipped."""
    name = source_name(source, "<jsonl>")
    lineno = 0
    with open_text(source) as f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{name} line {lineno}"
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataFormatError(f"invalid JSON ({e.msg} at column {e.colno})", where) from None
                yield fingerprint_from_json(obj, where)
        except UnicodeDecodeError as e:
            raise DataFormatError(f"not UTF-8 text ({e.reason})", f"{name} line {lineno + 1}") from None


def write_jsonl(fps: Iterable[Fingerprint], file: str | os.PathLike[str] | IO[str]) -> int:
    """Write `fps` one JSON object a line (UTF-8); returns how many were written."""
    if isinstance(file, str | os.PathLike):
        with open(Path(file), "w", encoding="utf-8", newline="\n") as f:
            return _write(fps, f)
    return _write(fps, file)


def _write(fps: Iterable[Fingerprint], f: IO[str]) -> int:
    n = 0
    for fp in fps:
        f.write(json.dumps(fingerprint_to_json(fp), ensure_ascii=False, separators=(",", ":"), default=_jsonable))
        f.write("\n")
        n += 1
    return n


def _jsonable(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


# ---------------------------------------------------------------------------- Fingerprint -> JSON


def fingerprint_to_json(fp: Fingerprint) -> dict[str, Any]:
    """The API fingerprint object for `fp`; None-valued optional keys are left out."""
    obj: dict[str, Any] = {"wifi": [_reading_to_json(r) for r in fp.wifi], "x": fp.x, "y": fp.y, "floor": fp.floor}
    for key in ("building", "device", "timestamp", "path", "user"):
        value = getattr(fp, key)
        if value is not None:
            obj[key] = value
    if fp.sensors is not None:
        obj["sensors"] = _sensors_to_json(fp.sensors)
    if fp.extra:
        obj["extra"] = fp.extra
    return obj


def _reading_to_json(r: WifiReading) -> dict[str, Any]:
    rssi = r.rssi
    d: dict[str, Any] = {"bssid": r.bssid, "rssi": int(rssi) if float(rssi).is_integer() else rssi}
    if r.age_ms is not None:
        d["age_ms"] = r.age_ms
    return d


def _sensors_to_json(s: SensorData) -> dict[str, Any]:
    d: dict[str, Any] = {"rate_hz": s.rate_hz}
    for key in SENSOR_KEYS:
        a = getattr(s, key)
        if a is not None:
            # Shortest decimal that round-trips the float32 value: exact on re-read, half the bytes of repr(float64).
            d[key] = [[float(str(v)) for v in row] for row in np.asarray(a, dtype=np.float32)]
    return d


# ---------------------------------------------------------------------------- JSON -> Fingerprint


def fingerprint_from_json(obj: object, where: str = "fingerprint") -> Fingerprint:
    """Validate one API fingerprint object; DataFormatError names the offending field."""
    o = _Obj(obj, where)
    wifi_items = o.get("wifi", list, required=True)
    fp = Fingerprint(
        wifi=[_reading(item, where, f"wifi[{i}]") for i, item in enumerate(wifi_items)],
        x=o.number("x"),
        y=o.number("y"),
        floor=o.label("floor", required=True) or "",
        building=o.label("building"),
        device=o.get("device", str),
        timestamp=o.integer("timestamp"),
        path=o.get("path", str),
        user=o.get("user", str),
        sensors=_sensors(o.get("sensors", dict), where),
        extra=o.get("extra", dict) or {},
    )
    check_fingerprint(fp, where)
    return fp


class _Obj:
    """Typed field access on a decoded JSON object, raising DataFormatError that names the field.

    `field` is this object's own path inside the line ("wifi[2]", "sensors"), None for the top level.
    """

    def __init__(self, obj: object, where: str, field: str | None = None) -> None:
        self.where = where
        self.field = field
        if not isinstance(obj, dict):
            raise DataFormatError(f"expected a JSON object, got {_kind(obj)}", self._at(None))
        self.obj: dict[str, Any] = obj

    def _at(self, key: str | None) -> str:
        path = ".".join(p for p in (self.field, key) if p)
        return f"{self.where}, field {path}" if path else self.where

    def err(self, key: str, message: str) -> DataFormatError:
        return DataFormatError(message, self._at(key))

    def get(self, key: str, typ: type, required: bool = False) -> Any:
        v = self.obj.get(key)
        if v is None:
            if required:
                raise self.err(key, "missing required field")
            return None
        if not isinstance(v, typ) or (isinstance(v, bool) and typ is not bool):
            raise self.err(key, f"expected {typ.__name__}, got {_kind(v)}")
        return v

    def number(self, key: str) -> float:
        v = self.obj.get(key)
        if v is None:
            raise self.err(key, "missing required field")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise self.err(key, f"expected a finite number, got {_kind(v)}")
        return float(v)

    def integer(self, key: str) -> int | None:
        v = self.obj.get(key)
        if v is None:
            return None
        if isinstance(v, float) and v.is_integer():
            return int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.err(key, f"expected an integer, got {_kind(v)}")
        return v

    def label(self, key: str, required: bool = False) -> str | None:
        """Floor/building labels: strings, or integers (UJIIndoorLoc style) turned into strings."""
        v = self.obj.get(key)
        if v is None:
            if required:
                raise self.err(key, "missing required field")
            return None
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise self.err(key, f"expected a string or integer, got {_kind(v)}")
        if isinstance(v, str) and not v.strip():
            raise self.err(key, "empty label")
        return str(v)


def _reading(item: object, where: str, field: str) -> WifiReading:
    o = _Obj(item, where, field)
    bssid = o.get("bssid", str, required=True)
    try:
        bssid = normalize_bssid(bssid)
    except ValueError as e:
        raise o.err("bssid", str(e)) from None
    try:
        rssi = check_rssi(o.obj.get("rssi"))
    except ValueError as e:
        raise o.err("rssi", str(e)) from None
    o.get("ssid", str)  # validated for the API contract, not kept (models use BSSIDs only)
    if o.obj.get("freq") is not None:
        o.number("freq")
    age = o.integer("age_ms")
    if age is not None and age < 0:
        raise o.err("age_ms", "must be >= 0")
    return WifiReading(bssid=bssid, rssi=rssi, age_ms=age)


def _sensors(obj: dict[str, Any] | None, where: str) -> SensorData | None:
    if obj is None:
        return None
    o = _Obj(obj, where, "sensors")
    rate = o.number("rate_hz")
    if rate <= 0:
        raise o.err("rate_hz", "must be > 0")
    arrays = {key: _xyz(o, key) for key in SENSOR_KEYS}
    return SensorData(rate_hz=rate, **arrays)


def _xyz(o: _Obj, key: str) -> np.ndarray | None:
    """A (T, 3) float32 array from [[x, y, z], ...]; missing or [] means the modality is absent."""
    v = o.get(key, list)
    if not v:
        return None
    try:
        a = np.array(v, dtype=np.float32)
    except (ValueError, TypeError):
        raise o.err(key, "expected a list of [x, y, z] numbers") from None
    if a.ndim != 2 or a.shape[1] != 3 or not np.isfinite(a).all():
        raise o.err(key, f"expected finite [x, y, z] rows, got shape {a.shape}")
    return a


def _kind(v: object) -> str:
    return "null" if v is None else type(v).__name__
