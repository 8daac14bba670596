"""Bodies of the read-only listing endpoints the console (and any client) uses: survey points, recent queries,
one model version with its error distribution, jobs, keys."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from app.schemas.api import JobOut, ModelVersionOut


class BBox(BaseModel):
    min_x: float
    min_y: float
    max_x: float
    max_y: float


class SurveyPoint(BaseModel):
    x: float
    y: float
    floor: str
    path: str | None = None


class SurveyPointsOut(BaseModel):
    floors: list[str] = Field(description="Floors that have survey points (all of them, whatever `floor` asked)")
    bbox: BBox | None = Field(description="Bounding box of the survey points on the asked floor(s); null if none")
    total: int = Field(description="Survey points on the asked floor(s)")
    points: list[SurveyPoint] = Field(description="At most `limit` of them, spread evenly over the survey")


class QueryPoint(BaseModel):
    query_id: str
    created_at: datetime
    x: float
    y: float
    floor: str
    error_m: float
    model: str
    version: int
    device: str | None = None


class QueriesOut(BaseModel):
    total: int = Field(description="Queries stored for the site")
    queries: list[QueryPoint] = Field(description="The newest `limit`, newest first")


class CdfPoint(BaseModel):
    error_m: float
    fraction: float = Field(description="Share of holdout errors at or below error_m")


class ModelVersionDetail(ModelVersionOut):
    cdf: list[CdfPoint] = Field(
        description="Points of the holdout error CDF stored with the version (0 at 0 m, then the median, P75 and "
        "P95 it was scored with); empty when the version has no holdout metrics"
    )
    cdf_source: str = Field(description="What the CDF points are: 'quantiles' (the stored metrics) or 'none'")
    job_id: str | None = None


class JobsOut(BaseModel):
    jobs: list[JobOut] = Field(description="Newest first")


class KeyInfo(BaseModel):
    id: str
    name: str
    role: str
    sites: list[str] | None
    prefix: str = Field(description="The first characters of the key, to recognise it")
    created_at: datetime
    revoked_at: datetime | None = None


class KeysOut(BaseModel):
    keys: list[KeyInfo]


def as_cdf(metrics: dict[str, Any]) -> list[CdfPoint]:
    """The CDF points the stored metrics allow: (0, 0), (median, .5), (P75, .75), (P95, .95)."""
    points = [CdfPoint(error_m=0.0, fraction=0.0)]
    for key, frac in (("median_m", 0.5), ("p75_m", 0.75), ("p95_m", 0.95)):
        value = metrics.get(key)
        if isinstance(value, int | float) and value == value and value >= points[-1].error_m:
            points.append(CdfPoint(error_m=float(value), fraction=frac))
    return points if len(points) > 1 else []
