"""Domain errors, and the one place they become HTTP responses or a job's error message.

    SitelocError             an expected failure with a message for the caller (`detail`)
    ├── Unauthorized 401, Forbidden 403, NotFound 404, Conflict 409, PayloadTooLarge 413
    ├── Invalid 422
    │   └── NotAvailable     a feature this build does not provide
    ├── Unavailable 503
    └── JobFailed            a background job cannot do what it was asked (bad data, a lost race)

Services raise these; routes never build error responses by hand, and `install_handlers` maps them to
HTTP. A background job's failure is described by `job_failure` alone: a `SitelocError` and an
`ml.errors.MLError` (the library's named data/parameter problems) become the job's message as they are;
Celery's soft time limit becomes a time-limit message; anything else is a bug and stays an "internal
error" (logged with its traceback by the caller). An unexpected exception in a request stays a 500.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ml.errors import MLError


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


class JobFailed(SitelocError):
    """A background job cannot do what it was asked; `detail` is the job's error, shown to the user."""

    status_code = 422


@dataclass(frozen=True)
class JobFailure:
    """What a failed job records: its error message, and whether it is a bug (an internal error)."""

    error: str
    internal: bool


def job_failure(exc: BaseException, *, soft_time_limit_s: float) -> JobFailure:
    """The one translation of an exception that ended a job into the job's error."""
    if isinstance(exc, SitelocError):
        return JobFailure(str(exc.detail), internal=False)
    if isinstance(exc, MLError):
        return JobFailure(str(exc), internal=False)
    if isinstance(exc, SoftTimeLimitExceeded):
        # Raised by Celery inside the running job; the transaction in progress rolls back, so nothing is kept.
        return JobFailure(f"time limit of {soft_time_limit_s:g} s exceeded; the job was stopped", internal=False)
    return JobFailure(f"internal error: {type(exc).__name__}: {exc}", internal=True)


def install_handlers(app: FastAPI) -> None:
    async def _handle(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SitelocError)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    app.add_exception_handler(SitelocError, _handle)
