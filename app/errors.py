"""Domain errors, and the one place they become HTTP responses.

Services raise these; routes never build error responses by hand. An
unexpected exception stays a 500 (it is a bug, logged with its traceback).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


class SitelocError(Exception):
    status_code = 400

    def __init__(self, detail: Any) -> None:
        super().__init__(detail if isinstance(detail, str) else repr(detail))
        self.detail = detail


class Unauthorized(SitelocError):
    status_code = 401


class Forbidden(SitelocError):
    status_code = 403


class NotFound(SitelocError):
    status_code = 404


class Conflict(SitelocError):
    status_code = 409


class PayloadTooLarge(SitelocError):
    status_code = 413


class Invalid(SitelocError):
    status_code = 422


class NotAvailable(Invalid):
    """A feature this build does not provide yet (a clear 4xx, never a stub)."""


class Unavailable(SitelocError):
    status_code = 503


def install_handlers(app: FastAPI) -> None:
    async def _handle(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SitelocError)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    app.add_exception_handler(SitelocError, _handle)
