"""One typed settings object for the API, the worker and the CLI.

Everything comes from `SITELOC_*` environment variables; nothing else in the
code base reads `os.environ`. Unset database/redis URLs select the embedded
mode (a SQLite file, an in-process worker, no Redis) that runs anywhere.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    # Query log group commit: many /locate requests share one transaction.
    query_commit_max_rows: int = Field(default=2000, ge=1)
    query_commit_max_wait_ms: float = Field(default=2.0, ge=0)

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
    # Fraction of the survey's paths held out at finetune time for honest metrics.
    holdout_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)

    # Co-training (automatic model updates from stored queries).
    # Beat / the embedded scheduler start an update for a site once this many unused queries have arrived.
    cotrain_min_new_queries: int = Field(default=500, ge=1)
    cotrain_check_seconds: float = Field(default=300.0, gt=0)  # how often the scheduler looks
    cotrain_max_queries: int = Field(default=20_000, ge=1)  # newest unused queries one update may use
    # A candidate is promoted only if its holdout mean error is at most (1 + tolerance) x the active one's.
    cotrain_tolerance: float = Field(default=0.02, ge=0.0, le=1.0)
    # The per-site update lock expires this long after its last renewal (a crashed worker frees it).
    cotrain_lock_seconds: float = Field(default=900.0, ge=10)

    # Tracking sessions (/locate with session_id) are forgotten after this much silence.
    session_ttl_s: float = Field(default=600.0, ge=1, le=7 * 24 * 3600)

    @field_validator("database_url", "redis_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if v == "" else v

    @property
    def embedded(self) -> bool:
        """True when no Redis is configured: jobs run in-process and notices stay in-process."""
        return self.redis_url is None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'siteloc.db').resolve()}"

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
