"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from app.deps import RuntimeDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(rt: RuntimeDep) -> JSONResponse:
    """Ready to serve: the database answers and has the schema; Redis answers in full mode."""
    checks: dict[str, str] = {}
    try:
        with rt.db.session() as s:
            version = s.execute(text("SELECT version_num FROM alembic_version")).scalar()
        checks["database"] = f"ok (schema {version})"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
    if rt.settings.redis_url:
        try:
            import redis

            redis.Redis.from_url(rt.settings.redis_url, socket_timeout=2).ping()
            checks["redis"] = "ok"
        except Exception as exc:
            checks["redis"] = f"unavailable: {type(exc).__name__}"
    ready = all(v.startswith("ok") for v in checks.values())
    body = {
        "status": "ready" if ready else "not ready",
        "mode": "embedded" if rt.settings.embedded else "full",
        "checks": checks,
    }
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
