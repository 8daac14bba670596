"""Bodies of the read-only listing endpoints the console (and any client) uses: survey points, recent queries,
one model version with its error distribution, jobs, keys."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.schemas.api import JobOut, ModelVersionOut
from app.schemas.common import UtcDatetime

CdfSource = Literal["holdout", "quantiles", "none"]


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
    created_at: UtcDatetime
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
        description="The version's holdout error CDF: 21 points (every 5%) from `metrics.error_quantiles_m` when the "
        "version has them, else 0 m, the median, P75 and P95 it was scored with; empty without holdout metrics"
    )
    cdf_source: CdfSource = Field(
        description="'holdout': the 21 stored quantiles; 'quantiles': from median/P75/P95 only; 'none'"
    )
    job_id: str | None = None


class JobsOut(BaseModel):
    jobs: list[JobOut] = Field(description="Newest first")


class KeyInfo(BaseModel):
    id: str
    name: str
    role: str
    sites: list[str] | None
    prefix: str = Field(description="The first characters of the key, to recognise it")
    created_at: UtcDatetime
    revoked_at: UtcDatetime | None = None


class KeysOut(BaseModel):
    keys: list[KeyInfo]


def as_cdf(metrics: dict[str, Any]) -> tuple[list[CdfPoint], CdfSource]:
    """The version's holdout error CDF: from `error_quantiles_m` (21 quantiles, stored by finetunes since this
    build) when present, else the points the scalar metrics give: (0, 0), (median, .5), (P75, .75), (P95, .95)."""
    quantiles = metrics.get("error_quantiles_m")
    if isinstance(quantiles, list) and len(quantiles) >= 2:
        n = len(quantiles) - 1
        return [CdfPoint(error_m=float(q), fraction=i / n) for i, q in enumerate(quantiles)], "holdout"
    points = [CdfPoint(error_m=0.0, fraction=0.0)]
    for key, frac in (("median_m", 0.5), ("p75_m", 0.75), ("p95_m", 0.95)):
        value = metrics.get(key)
        if isinstance(value, int | float) and value == value and value >= points[-1].error_m:
            points.append(CdfPoint(error_m=float(value), fraction=frac))
    return (points, "quantiles") if len(points) > 1 else ([], "none")
