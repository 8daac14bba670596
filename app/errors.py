"""Domain errors, and the one place they become HTTP responses or a job's error message.

    SitelocError             an expected failure with a message for the caller (`detail`)
    ├── Unauthorized 401, Forbidden 403, NotFound 404, Conflict 409, PayloadTooLarge 413
    ├── Invalid 422
    │   └── NotAvailable     a feature this build does not provide
    ├── TooManyRequests 429  a rate limit (with Retry-After)
    ├── Unavailable 503      a part the request needs is down (with Retry-After)
    └── JobFailed            a background job cannot do what it was asked (bad data, a lost race)

One error shape for every 4xx/5xx answer (`ErrorOut`): `{"detail": str}`, plus `"errors": [{"loc", "msg",
"type"}]` when the body or parameters failed validation (FastAPI's own validation errors and the services' list
details alike). Outages of the database or Redis (connection errors, not bugs) become 503 naming the part, with
`Retry-After`: the service recovers by itself when the part is back.

Services raise these; routes never build error responses by hand, and `install_handlers` maps them to
HTTP. A background job's failure is described by `job_failure` alone: a `SitelocError` and an
`ml.errors.MLError` (the library's named data/parameter problems) become the job's message as they are;
Celery's soft time limit becomes a time-limit message; anything else is a bug and stays an "internal
error" (logged with its traceback by the caller). An unexpected exception in a request stays a 500.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout

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


class TooManyRequests(SitelocError):
    status_code = 429

    def __init__(self, detail: Any, *, retry_after_s: float) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class Unavailable(SitelocError):
    status_code = 503
    retry_after_s: float = 5.0


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


log = logging.getLogger(__name__)


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorOut(BaseModel):
    """Every error answer: `detail` says what is wrong; `errors` lists each invalid field (validation only)."""

    detail: str
    errors: list[ErrorItem] | None = None


def _clean(v: Any) -> Any:
    """A JSON-encodable copy: non-finite floats (NaN, Infinity, 1e309 parsed as inf) become strings."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_clean(x) for x in v]
    if v is None or isinstance(v, str | int | float | bool):
        return v
    return str(v)


def error_items(errors: Any) -> list[dict[str, Any]]:
    """Validation errors as [{loc, msg, type}] (the input values are never echoed: they may be huge or NaN)."""
    out = []
    for e in errors if isinstance(errors, list) else [errors]:
        if isinstance(e, dict):
            loc = [x if isinstance(x, int) else str(x) for x in e.get("loc", ())]
            out.append({"loc": loc, "msg": str(_clean(e.get("msg", ""))), "type": str(e.get("type", "invalid"))})
        else:
            out.append({"loc": [], "msg": str(e), "type": "invalid"})
    return out


def _summary(items: list[dict[str, Any]]) -> str:
    parts = [f"{'.'.join(str(x) for x in i['loc']) or 'body'}: {i['msg']}" for i in items[:5]]
    more = f" (and {len(items) - 5} more)" if len(items) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


def error_body(detail: Any) -> dict[str, Any]:
    if isinstance(detail, str):
        return {"detail": detail}
    items = error_items(detail)
    return {"detail": _summary(items), "errors": items}


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


def is_redis_outage(exc: BaseException) -> bool:
    """A connection failure of Redis or of the Celery broker (kombu), not a bug."""
    import kombu.exceptions
    import redis.exceptions

    return isinstance(
        exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | kombu.exceptions.OperationalError
    )


def is_database_outage(exc: BaseException) -> bool:
    """A lost or refused database connection (pool timeout, server gone), not a constraint or a bug."""
    if isinstance(exc, DisconnectionError | PoolTimeout):
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        name = type(exc.orig).__name__ if exc.orig is not None else ""
        # psycopg's OperationalError covers refused/lost connections and a server shutting down; SQLite's
        # "database is locked"/"unable to open" are operational too: the database is unavailable right now.
        return name in ("OperationalError", "InterfaceError", "AdminShutdown", "CannotConnectNow")
    return False


def outage_error(exc: BaseException) -> Unavailable | None:
    """The 503 for an exception that is an outage of a part the service needs, else None."""
    if is_database_outage(exc):
        return Unavailable("the database is unavailable; retry shortly")
    if is_redis_outage(exc):
        return Unavailable("the job queue (Redis) is unavailable; retry shortly")
    return None


def error_response(exc: BaseException, method: str, path: str) -> JSONResponse | None:
    """The answer to an exception a request raised: a `SitelocError` or a validation error as its 4xx, an outage
    as 503 (logged); None for anything else (a bug: it stays a 500). The exception handlers installed on the app
    and the plain-ASGI /locate path (`app.api.locate`) both answer through this."""
    if isinstance(exc, RequestValidationError):
        return JSONResponse(error_body(list(exc.errors())), status_code=422)
    if not isinstance(exc, SitelocError):
        err = outage_error(exc)
        if err is None:
            return None
        log.warning("%s %s: %s (%s)", method, path, err.detail, type(exc).__name__)
        exc = err
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, Unavailable | TooManyRequests):
        headers.update(_retry_after(exc.retry_after_s))
    return JSONResponse(error_body(exc.detail), status_code=exc.status_code, headers=headers)


def install_handlers(app: FastAPI) -> None:
    async def _handle(request: Request, exc: Exception) -> JSONResponse:
        response = error_response(exc, request.method, request.url.path)
        if response is None:
            raise exc  # a bug stays a 500
        return response

    app.add_exception_handler(SitelocError, _handle)
    app.add_exception_handler(RequestValidationError, _handle)
    import kombu.exceptions
    import redis.exceptions

    for cls in (DBAPIError, DisconnectionError, PoolTimeout, redis.exceptions.RedisError, kombu.exceptions.KombuError):
        app.add_exception_handler(cls, _handle)
