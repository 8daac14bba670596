"""Tables. Model weights live here too (safetensors bytes), so any API host can load any version."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for big tables.
BigId = BigInteger().with_variant(Integer(), "sqlite")


# The jobs that uq_jobs_one_pending_cotrain keeps to one per site.
PENDING_COTRAIN = "kind = 'cotrain' AND state IN ('queued', 'running')"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class Site(Base):
    __tablename__ = "sites"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    floors: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Bumped in the same transaction as every activation: the cheap "did anything change" check.
    active_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    n_queries: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Lease held by the co-training job updating this site; expired leases are free (crash-safe lock).
    lock_job: Mapped[str | None] = mapped_column(String(32), nullable=True)
    lock_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16))
    sites: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)  # None = every site
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Survey(Base):
    __tablename__ = "surveys"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), index=True)
    format: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str | None] = mapped_column(String(500), nullable=True)
    n_fingerprints: Mapped[int] = mapped_column(Integer, default=0)
    n_windows: Mapped[int] = mapped_column(Integer, default=0)
    n_paths: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SurveyFingerprint(Base):
    """One labelled scan. `wifi` = [[bssid, rssi, age_ms | null], ...]."""

    __tablename__ = "fingerprints"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    survey_id: Mapped[str] = mapped_column(ForeignKey("surveys.id", ondelete="CASCADE"), index=True)
    path: Mapped[str | None] = mapped_column(String(200), nullable=True)
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    floor: Mapped[str] = mapped_column(String(64))
    building: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device: Mapped[str | None] = mapped_column(String(200), nullable=True)
    user: Mapped[str | None] = mapped_column(String(200), nullable=True)
    timestamp: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    wifi: Mapped[list[Any]] = mapped_column(JSON)
    __table_args__ = (Index("ix_fingerprints_site_id_id", "site_id", "id"),)


class Window(Base):
    """One labelled sensor window (about 1 s), with the latest WiFi scan at or before its end."""

    __tablename__ = "windows"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    survey_id: Mapped[str] = mapped_column(ForeignKey("surveys.id", ondelete="CASCADE"), index=True)
    path: Mapped[str | None] = mapped_column(String(200), nullable=True)
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    floor: Mapped[str] = mapped_column(String(64))
    building: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device: Mapped[str | None] = mapped_column(String(200), nullable=True)
    timestamp: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # The window's WiFi scan: a reference to the survey fingerprint of that scan when there is one
    # (no copy), else the scan inline ([[bssid, rssi, age_ms], ...]); both null = no scan yet.
    fingerprint_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    wifi: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    sensors: Mapped[bytes] = mapped_column(LargeBinary)  # app.services.codec.pack_sensors
    __table_args__ = (Index("ix_windows_site_id_id", "site_id", "id"),)


class SiteAP(Base):
    """A site's AP vocabulary: append-only, `idx` stable. Also the BSSID -> site index for detection."""

    __tablename__ = "site_aps"
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), primary_key=True)
    bssid: Mapped[str] = mapped_column(String(64), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer)
    n_seen: Mapped[int] = mapped_column(BigInteger, default=0)
    __table_args__ = (Index("ix_site_aps_bssid", "bssid"),)


class Query(Base):
    """Every /locate: its input, the answer, the model version. The unlabeled pool for co-training."""

    __tablename__ = "queries"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # time-ordered hex
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    device: Mapped[str | None] = mapped_column(String(200), nullable=True)
    client_timestamp: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    wifi: Mapped[list[Any]] = mapped_column(JSON)
    sensors: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    x: Mapped[float] = mapped_column(Float)
    y: Mapped[float] = mapped_column(Float)
    floor: Mapped[str] = mapped_column(String(64))
    building: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_m: Mapped[float] = mapped_column(Float)
    model_name: Mapped[str] = mapped_column(String(32))
    model_version: Mapped[int] = mapped_column(Integer)
    # Set by co-training to the job that consumed this query (queries are used once).
    used_by_job: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # The tracking session the query belonged to (client-chosen id, scoped by the key that opened it):
    # a session's queries, in time order, are one walk for self-maintenance updates.
    session_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The API key that sent the query (api_keys.id, or "bootstrap"; migration 0005, NULL in older rows). A session
    # is (key_id, session_id): two keys may use the same session id for different walks. No foreign key: the
    # bootstrap key has no row, and the log outlives revoked keys.
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    __table_args__ = (
        Index("ix_queries_site_id_id", "site_id", "id"),
        Index("ix_queries_site_id_session_id", "site_id", "session_id"),
        # The co-training pool (migration 0002): only rows no update has used.
        Index(
            "ix_queries_unused_site_id_id",
            "site_id",
            "id",
            postgresql_where=text("used_by_job IS NULL"),
            sqlite_where=text("used_by_job IS NULL"),
        ),
    )


class FloorPlan(Base):
    """A floor's walkable area: a GeoJSON FeatureCollection of polygons in the site's metric frame."""

    __tablename__ = "floor_plans"
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), primary_key=True)
    floor: Mapped[str] = mapped_column(String(64), primary_key=True)
    geojson: Mapped[dict[str, Any]] = mapped_column(JSON)
    source: Mapped[str] = mapped_column(String(32))  # api | ilc2020
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    site_id: Mapped[str] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))  # active | candidate | retired | rejected
    status_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    source: Mapped[str] = mapped_column(String(16))  # finetune | cotrain
    parent_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True, unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    weights: Mapped[bytes] = mapped_column(LargeBinary)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    training: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    __table_args__ = (
        UniqueConstraint("site_id", "version", name="uq_model_versions_site_version"),
        # At most one active version per site, enforced by the database.
        Index(
            "uq_model_versions_one_active",
            "site_id",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )


class SourceArtifact(Base):
    """The transferable part of source sites (a pretrained encoder base, or MSTA surrogate teachers), built
    once from their surveys and reused by every target that transfers from them: no raw source data needed."""

    __tablename__ = "source_artifacts"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(32))
    strategy: Mapped[str] = mapped_column(String(16))
    sites_key: Mapped[str] = mapped_column(String(400))  # sorted source site ids joined by ","
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    blob: Mapped[bytes] = mapped_column(LargeBinary)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    __table_args__ = (Index("ix_source_artifacts_lookup", "model", "strategy", "sites_key"),)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))  # finetune | cotrain
    site_id: Mapped[str | None] = mapped_column(ForeignKey("sites.id", ondelete="CASCADE"), nullable=True, index=True)
    state: Mapped[str] = mapped_column(String(16), default="queued")  # queued | running | succeeded | failed
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Running: touched every job_heartbeat_seconds by the worker; queued: when the job was last handed to the
    # workers. The sweeper (app.services.jobs.sweep_jobs) requeues or fails a job whose heartbeat went stale.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    __table_args__ = (
        Index("ix_jobs_state_heartbeat", "state", "heartbeat_at"),
        # At most one co-training update queued or running per site, enforced by the database (migration 0006):
        # concurrent requests, the scheduler and several API processes cannot both create one.
        Index(
            "uq_jobs_one_pending_cotrain",
            "site_id",
            unique=True,
            sqlite_where=text(PENDING_COTRAIN),
            postgresql_where=text(PENDING_COTRAIN),
        ),
    )
