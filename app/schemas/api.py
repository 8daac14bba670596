"""Bodies of the public API (see docs/api.md and the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from app.schemas.common import (
    FingerprintIn,
    FiniteParams,
    Label,
    Millis,
    NoNul,
    SensorWindowIn,
    StrictInt,
    Text,
    UtcDatetime,
    WifiEntry,
)
from ml.models import MODEL_NAMES, STRATEGY_NAMES
from ml.tracking import floorplan as fp

# Built from ml.models' registry (the one list of names); still a Literal, so OpenAPI shows the enum.
ModelName = Literal[MODEL_NAMES]  # type: ignore[valid-type]
Strategy = Literal[STRATEGY_NAMES]  # type: ignore[valid-type]


# A session's timestamps are kept exactly (as JSON numbers, and float64 in its track): 2^53 - 1 at most.
MAX_SESSION_MS = 2**53 - 1


class SiteCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, NoNul] = Field(min_length=1, max_length=200)
    floors: list[Label] | None = Field(
        default=None,
        max_length=500,
        description="Optional: the floor labels this site has; survey fingerprints on other floors are then refused",
    )


class Counts(BaseModel):
    fingerprints: int
    windows: int
    queries: int


class ActiveModel(BaseModel):
    name: str
    version: int


class SiteOut(BaseModel):
    id: str
    name: str
    floors: list[str] | None = None
    created_at: UtcDatetime
    counts: Counts | None = None
    active_model: ActiveModel | None = None


class SurveyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fingerprints: list[FingerprintIn] = Field(min_length=1)


class SurveyOut(BaseModel):
    survey_id: str
    fingerprints: int
    windows: int
    paths: int


class FinetuneIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: ModelName = "wknn"
    transfer_from: list[str] | None = Field(default=None, max_length=50)
    strategy: Strategy | None = Field(
        default=None,
        description="Transfer from the sites in transfer_from: 'encoder' or 'msta' (dnn, cnnloc), 'frozen' or "
        "'finetune' (mtloc: the IMU-LSTM pretrained on those sites' sensor windows, kept fixed or trained further). "
        "Default 'scratch'",
    )
    train_fraction: float | None = Field(
        default=None, gt=0, le=1, description="Use this fraction of the training paths (a seeded subset); default all"
    )
    seed: StrictInt = Field(default=0, ge=0, le=2**31 - 1)
    params: FiniteParams = Field(
        default_factory=dict,
        description="Model-specific settings overriding defaults. Finite numbers only; an integral number for an "
        "integer setting (k: 5.0) is taken as that integer",
    )


class CotrainIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    guard: bool = Field(
        default=True,
        description="Promote the update only if it is worse neither on the survey holdout nor on the held-out "
        "recent walks than the active version (beyond SITELOC_COTRAIN_TOLERANCE). false = promote anyway",
    )
    seed: StrictInt = Field(default=0, ge=0, le=2**31 - 1)
    params: FiniteParams = Field(
        default_factory=dict,
        description="Update settings overriding defaults (ml/selfupdate.py UpdateConfig, e.g. max_label_error_m, "
        "guard_fraction, single_query_labels; for itoloc also ml/cotrain.py CotrainConfig). Finite numbers only; "
        "an integral number for an integer setting (particles: 500.0) is taken as that integer",
    )


class JobRef(BaseModel):
    job_id: str


class JobOut(BaseModel):
    id: str
    kind: str
    site_id: str | None
    state: Literal["queued", "running", "succeeded", "failed"]
    progress: float
    message: str
    model_version: int | None = None
    metrics: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    created_at: UtcDatetime
    started_at: UtcDatetime | None = None
    finished_at: UtcDatetime | None = None


class ModelVersionOut(BaseModel):
    version: int
    model: str
    status: Literal["active", "candidate", "retired", "rejected"]
    status_reason: str | None = None
    source: str
    parent_version: int | None = None
    created_at: UtcDatetime
    metrics: dict[str, Any]
    training: dict[str, Any]


class LocateIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    site_id: str | None = Field(default=None, max_length=32, description="Omit to detect the site from the scan")
    wifi: list[WifiEntry] = Field(default_factory=list)
    sensors: SensorWindowIn | None = Field(
        default=None,
        description="About one second of motion sensors ending now; read by models trained on sensor windows "
        "(mtloc), which also answer a query with sensors and no WiFi",
    )
    device: Text | None = None
    timestamp: Millis | None = Field(
        default=None,
        description="unix milliseconds, when the scan was taken (required with session_id; at most 2^53 - 1 there)",
    )
    session_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Tracking session (client-chosen, 1-64 printable characters, e.g. one per walk): the answer "
        "is the session's estimate from this and its earlier queries (WiFi fixes, motion from `sensors`, the "
        "floor plan). Needs `timestamp`, non-decreasing within the session. A session query may carry only "
        "`sensors` once the session has a position. GET /sessions/{session_id} returns the whole track",
    )

    @field_validator("session_id")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        if v is not None and not v.isprintable():
            raise ValueError("session_id must be 1-64 printable characters")
        return v

    @model_validator(mode="after")
    def _session_needs_time(self) -> LocateIn:
        if self.session_id is not None and self.timestamp is None:
            raise ValueError("a query with session_id needs 'timestamp' (unix ms, non-decreasing in the session)")
        if self.session_id is not None and self.timestamp is not None and self.timestamp > MAX_SESSION_MS:
            raise ValueError(f"a session query's timestamp must be at most {MAX_SESSION_MS} (2^53 - 1 ms)")
        return self


class ModelRef(BaseModel):
    name: str
    version: int


class LocateOut(BaseModel):
    site_id: str
    x: float
    y: float
    floor: str
    building: str | None = None
    error_m: float = Field(description="The model's own estimate of this answer's error, metres")
    model: ModelRef
    query_id: str
    session_id: str | None = Field(default=None, description="Echoed for session queries")


class LocateBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    queries: list[LocateIn] = Field(min_length=1)


class LocateBatchOut(BaseModel):
    results: list[LocateOut]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["app", "operator", "admin"]
    sites: list[str] | None = Field(
        default=None, max_length=1000, description="Sites this key may act on; omit for all sites"
    )
    name: Text = ""


class KeyOut(BaseModel):
    id: str
    key: str | None = None
    role: str
    sites: list[str] | None
    name: str
    created_at: UtcDatetime | None = None


class TrackPoint(BaseModel):
    timestamp: int
    x: float
    y: float
    floor: str
    error_m: float


class SessionOut(BaseModel):
    session_id: str
    site_id: str
    points: list[TrackPoint] = Field(description="The causal answers, one per answered query")
    smoothed: list[TrackPoint] = Field(
        description="The whole walk smoothed forward-backward, one point per answered query timestamp"
    )


PLAN_RULES = (
    "GeoJSON FeatureCollection of walkable Polygons/MultiPolygons in the site's metric frame (x, y as the "
    "survey's); their union is walkable, a polygon's holes are not. Refused with a 422 naming the problem: a "
    "coordinate that is not a number (a boolean, a string) or any number in the body that is not finite (NaN, "
    f"Infinity, 1e309); a coordinate more than {fp.MAX_COORD_M / 1000:,.0f} km from the frame's origin (a projected "
    f"frame such as UTM or Web Mercator fits) or a plan spanning more than {fp.MAX_EXTENT_M / 1000:g} km either way "
    f"(coordinates are metres); more than {fp.MAX_VERTICES:,} vertices; more than {fp.MAX_EDGE_PAIRS:,} pairs of "
    "edges whose bounding boxes overlap without sharing a vertex (edges that cross or lie close together: thousands "
    "of thin spikes, outlines crossing each other many times; the ILC 2020 floor maps have up to 16,000); a walkable "
    f"area under {fp.MIN_AREA_M2:g} m^2. Invalid polygons are repaired (shapely make_valid, ring by ring): a "
    "polygon's walkable area is its outline's minus its holes', so a hole outside its outline takes nothing away "
    "and adds nothing, and a hole covering its outline leaves nothing. A plan is rasterised in "
    f"{fp.DEFAULT_RESOLUTION_M:g} m cells, coarser (doubling) for one of more than {fp.MAX_CELLS:,} cells or "
    f"{fp.MAX_CROSSINGS:,} edge crossings of its rows of cells."
)

# Floor plans (GeoJSON). Every number anywhere in the body is finite (NaN, Infinity and 1e309 are 422s: PostgreSQL's
# JSON cannot store them), coordinates are numbers, not booleans; members other than the ones below are kept as
# given. What the geometry itself must be (extent, vertices, area) is checked by ml/tracking/floorplan.py.
_GEOJSON = ConfigDict(extra="allow", allow_inf_nan=False)
Coordinate = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Position = Annotated[list[Coordinate], Field(min_length=2, max_length=3, description="[x, y] metres (z ignored)")]
Ring = list[Position]


class PolygonIn(BaseModel):
    model_config = _GEOJSON
    __pydantic_extra__: dict[str, JsonValue]
    type: Literal["Polygon"]
    coordinates: list[Ring] = Field(description="An outline ring, then its holes")


class MultiPolygonIn(BaseModel):
    model_config = _GEOJSON
    __pydantic_extra__: dict[str, JsonValue]
    type: Literal["MultiPolygon"]
    coordinates: list[list[Ring]]


class FeatureIn(BaseModel):
    model_config = _GEOJSON
    __pydantic_extra__: dict[str, JsonValue]
    type: Literal["Feature"] | None = None
    properties: dict[str, JsonValue] | None = None
    geometry: Annotated[PolygonIn | MultiPolygonIn, Field(discriminator="type")]


class PlanIn(BaseModel):
    """A floor plan: GeoJSON FeatureCollection of walkable (Multi)Polygons in the site's metric frame (what is
    refused: the PUT body's description, `PLAN_RULES`)."""

    model_config = _GEOJSON
    __pydantic_extra__: dict[str, JsonValue]
    type: Literal["FeatureCollection"]
    features: list[FeatureIn]


class PlanOut(BaseModel):
    site_id: str
    floor: str
    source: str
    updated_at: UtcDatetime
    area_m2: float | None = Field(
        description="Walkable area; null for a plan stored before the current limits that no longer passes them "
        "(tracking leaves it out: PUT a corrected one)"
    )
    plan: dict[str, Any] = Field(description="GeoJSON FeatureCollection of walkable polygons, site metres")


__all__ = ["FingerprintIn", "SensorWindowIn", "WifiEntry"]
