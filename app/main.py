"""Builds the FastAPI application. Nothing else happens here."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.types import Receive, Scope, Send

from app.api import browse, health, jobs, keys, locate, models, plans, sessions, sites
from app.api.console import mount_console
from app.api.locate import LocatePath
from app.config import Settings, get_settings
from app.errors import ErrorOut, install_handlers
from app.middleware import BodyLimit, Metrics
from app.runtime import Runtime
from app.schemas.api import LocateBatchIn, LocateIn, SurveyIn

DESCRIPTION = """Self-hosted indoor localization. POST a WiFi scan (and optionally a sensor window) to `/locate`
and get x, y (metres, the site's frame), floor and an error estimate. Auth: `Authorization: Bearer <key>`;
roles `app` (locate), `operator` (surveys, training, models of its sites), `admin` (everything, keys)."""


class SitelocApp(FastAPI):
    """FastAPI with /locate's plain-ASGI way in (`app.api.locate.LocatePath`) in front of its whole stack."""

    def __init__(self, *, max_locate: int, max_body: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._front = LocatePath(super().__call__, lambda: self.state.runtime, max_locate=max_locate, max_body=max_body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._front(scope, receive, send)


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

    app = SitelocApp(
        title="siteloc",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        max_locate=min(settings.max_locate_body_bytes, settings.max_body_bytes),
        max_body=settings.max_body_bytes,
        **_no_otel(),
    )
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
        browse.router,
    ):
        app.include_router(router)
    mount_console(app)
    app.add_middleware(
        BodyLimit,
        max_body=settings.max_body_bytes,
        max_upload=settings.max_upload_bytes,
        max_locate=settings.max_locate_body_bytes,
    )
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
    # The survey route reads its body by Content-Type itself, the locate routes validate theirs straight from
    # the JSON bytes; publish those JSON bodies' schemas too.
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (SurveyIn, LocateIn, LocateBatchIn):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
    _document_errors(schema)
    app.openapi_schema = schema
    return schema


_ERRORS = {
    "400": "Malformed request (e.g. an unreadable multipart body)",
    "401": "Missing, malformed, invalid or revoked API key",
    "403": "The key's role or site scope does not allow this",
    "404": "No such site, job, key or model version",
    "409": "Conflicts with the current state (e.g. no survey or no active model yet)",
    "413": "Body (or batch) larger than the limit",
    "422": "Invalid input: `detail` says what; `errors` lists each invalid field when the body failed validation",
    "429": "Rate limit exceeded; retry after `Retry-After` seconds",
    "503": "A part the request needs (the database, the job queue) is unavailable; retry after `Retry-After` seconds",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}}
_UNAUTHENTICATED = {"/healthz", "/readyz", "/metrics"}


def _document_errors(schema: dict[str, Any]) -> None:
    """Every operation documents the error answers it can give, all in the one `ErrorOut` shape."""
    components = schema["components"]["schemas"]
    error = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(error.pop("$defs", {}))
    components["ErrorOut"] = error
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    ref = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    for path, item in schema.get("paths", {}).items():
        for op in item.values():
            responses = op.setdefault("responses", {})
            if path in _UNAUTHENTICATED:
                if path == "/metrics":
                    text = {"text/plain": {"schema": {"type": "string"}}}
                    responses["200"] = {"description": "Prometheus text exposition format", "content": text}
                if path == "/readyz":
                    responses["503"] = {"description": "Not ready: `checks` names the part that is down"}
                continue
            for code, description in _ERRORS.items():
                entry: dict[str, Any] = {"description": description, "content": ref}
                if code in ("429", "503"):
                    entry["headers"] = _RETRY_AFTER
                responses[code] = entry
