"""Plain records shared by the readers, the models and the service.

Everything here is pure Python/numpy: the API converts its JSON into these, the
readers stream them out of files, and the models consume the dense
`FingerprintSet` built from them (see `ml.data.features`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(slots=True)
class WifiReading:
    """One access point heard in one scan."""

    bssid: str
    rssi: float  # dBm
    age_ms: int | None = None  # scan time minus the AP's last-seen time; None = unknown (fresh)


@dataclass(slots=True)
class SensorData:
    """About one second of phone motion sensors, resampled to a fixed rate.

    Each array is (T, 3) float32 in Android axes and units (m/s^2, rad/s, uT),
    or None when that modality is missing.
    """

    rate_hz: float
    accel: np.ndarray | None = None
    gyro: np.ndarray | None = None
    mag: np.ndarray | None = None
    # Android TYPE_ROTATION_VECTOR, (T, 3) [x, y, z] or (T, 4) [x, y, z, w]: a unit quaternion device -> ENU world
    rotation: np.ndarray | None = None


@dataclass(slots=True)
class Fingerprint:
    """One labelled WiFi scan (a survey row), optionally with a sensor window.

    `floor` and `building` are labels as strings ("0", "B1", ...). `x`, `y` are
    metres in the site's frame. `timestamp` is unix milliseconds. `path` groups
    fingerprints recorded in one walk (splits never cut a path).
    """

    wifi: list[WifiReading]
    x: float
    y: float
    floor: str
    building: str | None = None
    device: str | None = None
    timestamp: int | None = None
    path: str | None = None
    user: str | None = None
    sensors: SensorData | None = None
    extra: dict[str, object] = field(default_factory=dict)
