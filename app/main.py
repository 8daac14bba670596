"""Builds the FastAPI application. Nothing else happens here."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from app.api import health, jobs, keys, locate, models, plans, sessions, sites
from app.config import Settings, get_settings
from app.errors import install_handlers
from app.middleware import BodyLimit, Metrics
from app.runtime import Runtime
from app.schemas.api import SurveyIn

DESCRIPTION = """Self-hosted indoor localization. POST a WiFi scan (and optionally a sensor window) to `/locate`
and get x, y (metres, the site's frame), floor and an error estimate. Auth: `Authorization: Bearer <key>`;
roles `app` (locate), `operator` (surveys, training, models of its sites), `admin` (everything, keys)."""


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = runtime or Runtime(settings)
        app.state.runtime = rt
        rt.start()
        try:
            yield
        finally:
            rt.stop()

    app = FastAPI(title="siteloc", version="0.1.0", description=DESCRIPTION, lifespan=lifespan, **_no_otel())
    install_handlers(app)
    for router in (
        sites.router,
        plans.router,
        jobs.router,
        models.router,
        locate.router,
        sessions.router,
        keys.router,
        health.router,
    ):
        app.include_router(router)
    app.add_middleware(BodyLimit, max_body=settings.max_body_bytes, max_upload=settings.max_upload_bytes)
    app.add_middleware(Metrics)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _no_otel() -> dict[str, Any]:
    """Newer FastAPI checks for OpenTelemetry providers on every request; siteloc exports Prometheus metrics
    (/metrics) instead, so switch that off where the option exists."""
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    return {}


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    # The survey route reads its body by Content-Type itself; publish the JSON body's schema too.
    survey = SurveyIn.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(survey.pop("$defs", {}))
    components["SurveyIn"] = survey
    app.openapi_schema = schema
    return schema
