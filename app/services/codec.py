"""Compact binary storage for sensor windows and conversions between API/DB/ml shapes."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from ml.types import Fingerprint, SensorData, WifiReading

_MAGIC_V1 = b"SLW1"  # rate, n, mask, then (n, 3) float32 per present modality (accel/gyro/mag; no rotation)
_HEADER_V1 = struct.Struct("<4sfHB")  # magic, rate_hz, n_samples, modality mask
_MAGIC = b"SLW2"  # rate, mask, then per present modality: n (uint16), width (uint8), (n, width) float32
_HEADER = struct.Struct("<4sfB")
_PART = struct.Struct("<HB")
_MODALITIES = ("accel", "gyro", "mag", "rotation")


def pack_sensors(s: SensorData) -> bytes:
    """Every modality (rotation vector included, 3 or 4 columns) at its own length; missing ones take no space."""
    arrays = [getattr(s, m) for m in _MODALITIES]
    mask = sum(1 << i for i, a in enumerate(arrays) if a is not None)
    parts = [_HEADER.pack(_MAGIC, float(s.rate_hz), mask)]
    for a in arrays:
        if a is not None:
            arr = np.asarray(a, dtype="<f4").reshape(len(a), -1)
            parts.append(_PART.pack(arr.shape[0], arr.shape[1]))
            parts.append(arr.tobytes())
    return b"".join(parts)


def unpack_sensors(blob: bytes) -> SensorData:
    if blob[:4] == _MAGIC_V1:  # rows stored before rotation was kept
        _, rate, n, mask = _HEADER_V1.unpack_from(blob)
        out = SensorData(rate_hz=float(rate))
        offset = _HEADER_V1.size
        for i, m in enumerate(_MODALITIES[:3]):
            if mask & (1 << i):
                arr = np.frombuffer(blob, dtype="<f4", count=n * 3, offset=offset).reshape(n, 3).astype(np.float32)
                setattr(out, m, arr)
                offset += n * 12
        return out
    magic, rate, mask = _HEADER.unpack_from(blob)
    if magic != _MAGIC:
        raise ValueError("not a siteloc sensor window")
    out = SensorData(rate_hz=float(rate))
    offset = _HEADER.size
    for i, m in enumerate(_MODALITIES):
        if mask & (1 << i):
            n, width = _PART.unpack_from(blob, offset)
            offset += _PART.size
            arr = np.frombuffer(blob, dtype="<f4", count=n * width, offset=offset).reshape(n, width)
            setattr(out, m, arr.astype(np.float32))
            offset += n * width * 4
    return out


def sensors_from_api(d: dict[str, Any] | None) -> SensorData | None:
    if not d:
        return None
    rot = d.get("rotation")
    return SensorData(
        rate_hz=float(d["rate_hz"]),
        **{m: (np.asarray(d[m], dtype=np.float32).reshape(-1, 3) if d.get(m) else None) for m in _MODALITIES[:3]},
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
