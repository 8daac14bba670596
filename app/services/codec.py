"""Compact binary storage for sensor windows and conversions between API/DB/ml shapes."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from ml.types import Fingerprint, SensorData, WifiReading

_HEADER = struct.Struct("<4sfHB")  # magic, rate_hz, n_samples, modality mask
_MAGIC = b"SLW1"
_MODALITIES = ("accel", "gyro", "mag")


def pack_sensors(s: SensorData) -> bytes:
    """rate, per-modality presence mask and (T, 3) float32 arrays; missing modalities take no space."""
    arrays = [getattr(s, m) for m in _MODALITIES]
    n = max((len(a) for a in arrays if a is not None), default=0)
    mask = sum(1 << i for i, a in enumerate(arrays) if a is not None)
    parts = [_HEADER.pack(_MAGIC, float(s.rate_hz), n, mask)]
    for a in arrays:
        if a is not None:
            buf = np.zeros((n, 3), dtype="<f4")
            buf[: len(a)] = a
            parts.append(buf.tobytes())
    return b"".join(parts)


def unpack_sensors(blob: bytes) -> SensorData:
    magic, rate, n, mask = _HEADER.unpack_from(blob)
    if magic != _MAGIC:
        raise ValueError("not a siteloc sensor window")
    out = SensorData(rate_hz=float(rate))
    offset = _HEADER.size
    for i, m in enumerate(_MODALITIES):
        if mask & (1 << i):
            arr = np.frombuffer(blob, dtype="<f4", count=n * 3, offset=offset).reshape(n, 3).astype(np.float32)
            setattr(out, m, arr)
            offset += n * 12
    return out


def sensors_from_api(d: dict[str, Any] | None) -> SensorData | None:
    if not d:
        return None
    rot = d.get("rotation")
    return SensorData(
        rate_hz=float(d["rate_hz"]),
        **{m: (np.asarray(d[m], dtype=np.float32).reshape(-1, 3) if d.get(m) else None) for m in _MODALITIES},
        # not in the packed query-log format (accel/gyro/mag only): used by tracking sessions as it arrives
        rotation=np.asarray(rot, dtype=np.float32) if rot else None,
    )


def wifi_to_db(wifi: list[WifiReading]) -> list[list[Any]]:
    return [[r.bssid, r.rssi, r.age_ms] for r in wifi]


def wifi_from_db(rows: list[list[Any]] | None) -> list[WifiReading]:
    return [WifiReading(b, float(r), None if a is None else int(a)) for b, r, a in (rows or [])]


def wifi_from_api(entries: list[Any]) -> list[WifiReading]:
    """From validated `WifiEntry` models."""
    return [WifiReading(e.bssid, e.rssi, e.age_ms) for e in entries]


def fingerprint_from_api(fp: Any) -> Fingerprint:
    """From a validated `FingerprintIn`."""
    return Fingerprint(
        wifi=wifi_from_api(fp.wifi),
        x=fp.x,
        y=fp.y,
        floor=str(fp.floor),
        building=None if fp.building is None else str(fp.building),
        device=fp.device,
        timestamp=fp.timestamp,
        path=fp.path,
        sensors=sensors_from_api(fp.sensors.model_dump() if fp.sensors else None),
    )
