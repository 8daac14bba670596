"""SQLAlchemy 2.0 tables (the schema itself is owned by Alembic: migrations/)."""

from app.models.tables import (
    ApiKey,
    Base,
    FloorPlan,
    Job,
    ModelVersion,
    Query,
    Site,
    SiteAP,
    SourceArtifact,
    Survey,
    SurveyFingerprint,
    Window,
)

__all__ = [
    "ApiKey",
    "Base",
    "FloorPlan",
    "Job",
    "ModelVersion",
    "Query",
    "Site",
    "SiteAP",
    "SourceArtifact",
    "Survey",
    "SurveyFingerprint",
    "Window",
]
