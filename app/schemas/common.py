"""Request/response bodies shared by several resources."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from ml.data.bssid import RSSI_MAX, RSSI_MIN, normalize_bssid
from ml.data.limits import INT64_MAX, LABEL_MAX, TEXT_MAX


def _no_nul(v: str) -> str:
    # PostgreSQL cannot store NUL in text (SQLite can): refused for both, before anything is answered or stored.
    if "\x00" in v:
        raise ValueError("must not contain NUL characters")
    return v


NoNul = AfterValidator(_no_nul)
Label = Annotated[
    str,
    BeforeValidator(lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v),
    Field(min_length=1, max_length=LABEL_MAX),
    NoNul,
]
# Free text kept in String(200) columns (device, path, names).
Text = Annotated[str, Field(max_length=TEXT_MAX), NoNul]
# Unix milliseconds, stored as BIGINT: at most 2^63 - 1.
Millis = Annotated[int, Field(ge=0, le=INT64_MAX, strict=True)]
# Integer fields that must not take a JSON boolean (true is not 1).
StrictInt = Annotated[int, Field(strict=True)]


def _finite_params(params: dict[str, Any]) -> dict[str, Any]:
    # The typed float fields of the API refuse NaN and Infinity themselves (allow_inf_nan=False, issue 19); a free
    # settings dict ({"params": {...}}) takes any JSON value, and model_dump(mode="json") would turn NaN into null,
    # which the settings check then reports as "must be float, not None". Refused here, by name.
    def walk(v: Any, where: str) -> None:
        if isinstance(v, float) and not math.isfinite(v):
            spelled = "NaN" if math.isnan(v) else "Infinity" if v > 0 else "-Infinity"  # as JSON spells them
            raise ValueError(f"{where} must be a finite number, not {spelled}")
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{where}.{k}" if where else str(k))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(x, f"{where}[{i}]")

    walk(params, "")
    return params


# A free-form settings dict (finetune and cotrain `params`): any JSON value, but no NaN or Infinity in it.
FiniteParams = Annotated[dict[str, Any], AfterValidator(_finite_params)]


def _aware(d: datetime) -> datetime:
    # SQLite hands back naive datetimes (stored in UTC); PostgreSQL aware ones: answers say UTC in both modes.
    return d.replace(tzinfo=UTC) if d.tzinfo is None else d


UtcDatetime = Annotated[datetime, AfterValidator(_aware)]


class WifiEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    bssid: str = Field(
        description="AP identifier: a MAC address (normalised to lower-case colon form) or another "
        "1-64 character printable identifier, kept verbatim"
    )
    rssi: float = Field(ge=RSSI_MIN, le=RSSI_MAX, description="Received signal strength, dBm")
    ssid: str | None = Field(default=None, max_length=256)
    freq: int | None = Field(default=None, ge=0, le=100_000, description="MHz")
    age_ms: int | None = Field(
        default=None,
        ge=0,
        le=INT64_MAX,
        description="Optional: how long before the scan this entry was "
        "last seen (Android ScanResult timestamp). Stale cached entries are ignored by models "
        "that learned a cut-off.",
    )

    @field_validator("bssid")
    @classmethod
    def _normalise(cls, v: str) -> str:
        return normalize_bssid(v)


Xyz = Annotated[list[Annotated[float, Field(allow_inf_nan=False)]], Field(min_length=3, max_length=3)]

# Physically possible bounds for phone sensors (Android axes and units). Beyond them a value is a unit
# mistake (milli-g, degrees/s, nT, ...) rather than a reading, and is refused with a 422.
SENSOR_LIMITS = {"accel": (200.0, "m/s^2"), "gyro": (50.0, "rad/s"), "mag": (2000.0, "uT")}
MAX_WINDOW_S = 10.0  # a session query's window covers the time since its previous query, up to this

Quat = Annotated[
    list[Annotated[float, Field(allow_inf_nan=False, ge=-1.001, le=1.001)]], Field(min_length=3, max_length=4)
]


class SensorWindowIn(BaseModel):
    """About one second of motion sensors: (x, y, z) samples at `rate_hz`; any modality may be missing."""

    model_config = ConfigDict(extra="ignore")

    rate_hz: float = Field(gt=0, le=1000, allow_inf_nan=False, description="Sampling rate of the arrays, Hz")
    accel: list[Xyz] | None = Field(default=None, max_length=2000, description="Accelerometer, m/s^2")
    gyro: list[Xyz] | None = Field(default=None, max_length=2000, description="Gyroscope, rad/s")
    mag: list[Xyz] | None = Field(default=None, max_length=2000, description="Magnetometer, uT")
    rotation: list[Quat] | None = Field(
        default=None,
        max_length=2000,
        description="Android TYPE_ROTATION_VECTOR: [x, y, z] or [x, y, z, w], a unit quaternion rotating the "
        "phone's axes into the east-north-up world frame. Tracking sessions take the heading from it "
        "(else from gyroscope + magnetometer + accelerometer)",
    )

    @model_validator(mode="after")
    def _plausible(self) -> SensorWindowIn:
        for name in ("accel", "gyro", "mag", "rotation"):
            samples = getattr(self, name)
            if samples is not None and len(samples) / self.rate_hz > MAX_WINDOW_S + 0.5:
                raise ValueError(
                    f"{name}: {len(samples)} samples at {self.rate_hz:g} Hz is more than {MAX_WINDOW_S:g} s"
                )
        if self.rotation is not None and len({len(q) for q in self.rotation}) > 1:
            raise ValueError("rotation: every sample has 3 values [x, y, z] or every sample 4 [x, y, z, w]")
        for name, (limit, unit) in SENSOR_LIMITS.items():
            samples = getattr(self, name)
            if samples is None:
                continue
            if len(samples) < 2:
                raise ValueError(f"{name}: a window needs at least 2 samples")
            worst = max(abs(v) for xyz in samples for v in xyz)
            if worst > limit:
                raise ValueError(f"{name}: |value| {worst:g} exceeds {limit:g} {unit}; send Android units")
        return self


class FingerprintIn(BaseModel):
    model_config = ConfigDict(extra="ignore")

    wifi: list[WifiEntry] = Field(max_length=4096)
    x: float = Field(allow_inf_nan=False)
    y: float = Field(allow_inf_nan=False)
    floor: Label
    building: Label | None = None
    device: Text | None = None
    timestamp: Millis | None = Field(default=None, description="unix milliseconds")
    path: Text | None = Field(default=None, description="walk/trace id: splits keep a path together")
    sensors: SensorWindowIn | None = None


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True)
