"""One typed settings object for the API, the worker and the CLI.

Everything comes from `SITELOC_*` environment variables; nothing else in the
code base reads `os.environ`. Unset database/redis URLs select the embedded
mode (a SQLite file, an in-process worker, no Redis) that runs anywhere.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SITELOC_", extra="ignore")

    # Storage. Unset = a SQLite file under data_dir (embedded mode).
    database_url: str | None = None
    data_dir: Path = Path("siteloc-data")
    # Redis URL (broker, result of model-change notices). Unset = embedded mode: no Redis, in-process worker.
    redis_url: str | None = None
    # Where models run: auto = CUDA when present, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Accepted as an admin key when set (first setup, automated evaluation).
    bootstrap_admin_key: SecretStr | None = None

    # Input limits: a request beyond them gets 413/422 naming the limit.
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)  # JSON bodies
    max_upload_bytes: int = Field(default=2 * 1024 * 1024 * 1024, ge=1024)  # multipart survey files
    max_aps_per_scan: int = Field(default=1024, ge=1)
    max_batch_queries: int = Field(default=1000, ge=1)
    max_survey_fingerprints: int = Field(default=200_000, ge=1)  # per JSON survey request

    # Body limit of /locate (one scan: a few KiB; 1,024 APs fit in ~80 KiB). Checked before anything is parsed.
    max_locate_body_bytes: int = Field(default=256 * 1024, ge=1024)

    # Rate limits (token buckets, per key by role, and per client address for failed authentication): requests
    # per second and burst size; 0 = unlimited. Shared by all API processes through Redis in full mode. The app
    # default stays far above what one key sends in the load benchmark (32 connections, a few thousand/s).
    rate_limit_app_per_s: float = Field(default=20_000.0, ge=0)
    rate_limit_app_burst: float = Field(default=40_000.0, ge=1)
    rate_limit_operator_per_s: float = Field(default=200.0, ge=0)
    rate_limit_operator_burst: float = Field(default=400.0, ge=1)
    rate_limit_admin_per_s: float = Field(default=1_000.0, ge=0)
    rate_limit_admin_burst: float = Field(default=2_000.0, ge=1)
    rate_limit_auth_failures_per_s: float = Field(default=5.0, ge=0)
    rate_limit_auth_failures_burst: float = Field(default=50.0, ge=1)

    # Query log group commit: many /locate requests share one transaction.
    query_commit_max_rows: int = Field(default=2000, ge=1)
    query_commit_max_wait_ms: float = Field(default=2.0, ge=0)

    # Batched inference: one executor per loaded model gathers concurrent /locate queries for at most
    # this long / this many rows and answers them with one predict call.
    inference_max_batch: int = Field(default=64, ge=1)
    inference_max_wait_ms: float = Field(default=1.0, ge=0)
    # Loaded models per API process are bounded by this (least recently used evicted, reloaded on demand).
    model_cache_mb: int = Field(default=2048, ge=1)
    # Freed memory an API process keeps for reuse instead of returning it to the OS (glibc's malloc trim
    # threshold; allocations up to 32 MiB are then served from it). A query's scratch arrays are a few MiB:
    # with glibc's defaults a process that only loads models (full mode) gives them back after each predict and
    # faults them in again: about a tenth of its CPU per request under the wknn load (docs/benchmarks/
    # serving.md). 0 = leave glibc's defaults.
    malloc_keep_mb: int = Field(default=128, ge=0)
    # Stored queries older than this are deleted (unset: kept forever), except those a pending or running
    # co-training update may still read.
    query_retention_days: float | None = Field(default=None, gt=0)

    # How often an API process checks for model activations made elsewhere (also the fallback
    # when the Redis notice is missed).
    model_refresh_seconds: float = Field(default=2.0, gt=0)
    # How long an API key lookup is cached in-process (revocation takes effect within this time).
    key_cache_seconds: float = Field(default=5.0, ge=0)

    # Worker time limits; Celery's Redis visibility_timeout is set above the hard limit so a
    # long job is never redelivered while it still runs.
    job_soft_time_limit_s: int = Field(default=4 * 3600, ge=10)
    job_hard_time_limit_s: int = Field(default=4 * 3600 + 600, ge=20)
    # The Celery queue jobs go to and `siteloc worker` consumes.
    job_queue: str = Field(default="siteloc", min_length=1, max_length=100)
    # Job liveness: a running job's worker touches its row every job_heartbeat_seconds; the scheduler (Celery beat
    # or the embedded one) sweeps every job_sweep_seconds and requeues a job whose heartbeat is older than
    # job_stale_seconds (a killed worker), or fails it after job_max_attempts starts. A queued job not started
    # within job_stale_seconds is handed to the workers again (a lost send).
    job_heartbeat_seconds: float = Field(default=15.0, gt=0)
    job_stale_seconds: float = Field(default=180.0, gt=0)
    job_sweep_seconds: float = Field(default=60.0, gt=0)
    job_max_attempts: int = Field(default=3, ge=1)
    # Fraction of the survey's paths held out at finetune time for honest metrics.
    holdout_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)

    # Co-training (automatic model updates from stored queries).
    # Beat / the embedded scheduler start an update for a site once this many unused queries have arrived.
    cotrain_min_new_queries: int = Field(default=500, ge=1)
    # ...or once the tracking sessions stored since the last update add up to this many minutes of walking (every
    # model learns from session tracks; only itoloc also learns from single queries, so only itoloc counts them).
    cotrain_min_session_minutes: float = Field(default=30.0, gt=0)
    cotrain_check_seconds: float = Field(default=300.0, gt=0)  # how often the scheduler looks
    cotrain_max_queries: int = Field(default=20_000, ge=1)  # newest unused queries one update may use
    # A candidate is promoted only if its holdout mean error is at most (1 + tolerance) x the active one's.
    cotrain_tolerance: float = Field(default=0.02, ge=0.0, le=1.0)
    # ...and only if its answers to the held-out recent walks' scans that look like the survey's fall at most (1 + this)
    # x as far from those walks' tracks (made with the active model's answers, so the score favours the active
    # model; docs/benchmarks/cotrain.md).
    cotrain_traffic_tolerance: float = Field(default=0.15, ge=0.0, le=10.0)
    # The per-site update lock expires this long after its last renewal (a crashed worker frees it).
    cotrain_lock_seconds: float = Field(default=900.0, ge=10)

    # Tracking sessions (/locate with session_id) are forgotten after this much silence.
    session_ttl_s: float = Field(default=600.0, ge=1, le=7 * 24 * 3600)

    @field_validator("database_url", "redis_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if v == "" else v

    @model_validator(mode="after")
    def _heartbeat_below_stale(self) -> Settings:
        if self.job_stale_seconds < 3 * self.job_heartbeat_seconds:
            raise ValueError("job_stale_seconds must be at least 3 x job_heartbeat_seconds (a slow beat is not death)")
        return self

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: jobs run in-process and notices stay in-process."""
        return self.redis_url is None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'siteloc.db').resolve()}"

    def embedded_worker_lock_path(self) -> Path | None:
        """The file whose lock elects the one embedded process that runs jobs (several `--workers` share the
        database): next to the SQLite file, else in the data dir. None for an in-memory database."""
        url = make_url(self.resolved_database_url)
        if url.get_backend_name() == "sqlite":
            if not url.database or url.database == ":memory:":
                return None
            return Path(url.database).with_name(Path(url.database).name + ".worker-lock")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        return self.data_dir / "embedded-worker.lock"

    @property
    def visibility_timeout_s(self) -> int:
        return self.job_hard_time_limit_s + 3600

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
