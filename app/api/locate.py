"""/locate: the hot path. Answers are stored (group commit) before they are returned.

The routes below are FastAPI's (they document the API and answer when the app is driven through FastAPI's
router); `LocatePath` answers the same two requests as plain ASGI in front of FastAPI's middleware, routing and
dependency solving, which cost a /locate several times what siteloc's own work does. Both call the same
functions here (`answer_one`, `answer_batch`), with the same authentication (`app.deps.authenticate`), the same
body limits and the same error answers (`app.errors.error_response`): one implementation, two ways in.
"""

from __future__ import annotations

import time
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from app.deps import AnyKey, RuntimeDep, authenticate
from app.errors import PayloadTooLarge, error_response
from app.middleware import LATENCY, REQUESTS, too_large_body
from app.runtime import Runtime
from app.schemas.api import LocateBatchIn, LocateBatchOut, LocateIn, LocateOut
from app.security import Principal

router = APIRouter(tags=["locate"])

M = TypeVar("M", bound=BaseModel)


def _body_schema(name: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
        }
    }


def _parse(model: type[M], raw: bytes) -> M:
    """The body validated by pydantic-core straight from JSON bytes (no intermediate dict: about a third of
    FastAPI's body handling per request); errors are FastAPI's usual 422 with `loc` starting at "body"."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


async def answer_one(rt: Runtime, principal: Principal, raw: bytes) -> bytes:
    """POST /locate: the JSON answer to one query, stored before it is returned."""
    body = _parse(LocateIn, raw)
    return orjson.dumps((await rt.locator.locate([body], principal))[0])


async def answer_batch(rt: Runtime, principal: Principal, raw: bytes) -> bytes:
    """POST /locate/batch: the JSON answers to all queries (all or nothing), stored before they are returned."""
    body = _parse(LocateBatchIn, raw)
    if len(body.queries) > rt.settings.max_batch_queries:
        raise PayloadTooLarge(f"{len(body.queries)} queries in one batch; the limit is {rt.settings.max_batch_queries}")
    return orjson.dumps({"results": await rt.locator.locate(body.queries, principal)})


@router.post(
    "/locate", response_model=LocateOut, response_model_exclude_none=True, openapi_extra=_body_schema("LocateIn")
)
async def locate(request: Request, rt: RuntimeDep, principal: AnyKey) -> Response:
    """Where is this phone? Omit `site_id` to detect the site from the scan."""
    return Response(await answer_one(rt, principal, await request.body()), media_type="application/json")


@router.post(
    "/locate/batch",
    response_model=LocateBatchOut,
    response_model_exclude_none=True,
    openapi_extra=_body_schema("LocateBatchIn"),
)
async def locate_batch(request: Request, rt: RuntimeDep, principal: AnyKey) -> Response:
    """Several queries at once (each may name its own site); results in order. All or nothing."""
    return Response(await answer_batch(rt, principal, await request.body()), media_type="application/json")


# -- the plain ASGI way in -------------------------------------------------------------------------------------------


class _TooLarge(Exception):
    pass


class _Disconnected(Exception):
    pass


_ANSWERS = {"/locate": answer_one, "/locate/batch": answer_batch}
_JSON = (b"content-type", b"application/json")


class LocatePath:
    """`POST /locate` and `POST /locate/batch` as plain ASGI; every other request goes to `app`.

    In the order FastAPI's stack checks them: a declared Content-Length over the limit (413, `BodyLimit`'s
    answer), the API key and its rate limit (401/403/429), the body as it streams in (413), its validation
    (422), then the answer. Errors are the app's own error answers; anything unexpected is a 500, re-raised for
    the server to log, as Starlette's `ServerErrorMiddleware` does. Counted in the same Prometheus metrics as
    every other request (`route` = the path)."""

    def __init__(self, app: ASGIApp, runtime: Any, *, max_locate: int, max_body: int) -> None:
        self.app = app
        self._runtime = runtime  # () -> Runtime: the app's runtime exists once its lifespan has started
        self._limits = {"/locate": max_locate, "/locate/batch": max_body}
        self._requests = {
            path: {s: REQUESTS.labels("POST", path, str(s)) for s in (200, 401, 413, 422, 429, 500, 503)}
            for path in _ANSWERS
        }
        self._latency = {path: LATENCY.labels("POST", path) for path in _ANSWERS}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path")
        if path not in _ANSWERS or scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        try:
            status = await self._answer(path, scope, receive, send)
        finally:
            counter = self._requests[path].get(status)
            (counter or REQUESTS.labels("POST", path, str(status))).inc()
            self._latency[path].observe(time.perf_counter() - t0)

    async def _answer(self, path: str, scope: Scope, receive: Receive, send: Send) -> int:
        limit = self._limits[path]
        authorization = length = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is None:
                    authorization = value.decode("latin-1")
            elif name == b"content-length":
                length = value
        if length is not None and length.isdigit() and int(length) > limit:
            await too_large_body(send, limit)
            return 413
        rt = self._runtime()
        try:
            client = scope.get("client")
            principal = await authenticate(rt, authorization, client[0] if client else "unknown")
            raw = await _read_body(receive, limit)
            payload = await _ANSWERS[path](rt, principal, raw)
        except _TooLarge:
            await too_large_body(send, limit)
            return 413
        except _Disconnected:
            return 500  # nobody to answer (counted like an answer that never went out)
        except Exception as exc:
            response = error_response(exc, "POST", path)
            if response is None:  # a bug: 500, and the server logs the traceback
                await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
                raise
            await response(scope, receive, send)
            return response.status_code
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [_JSON, (b"content-length", b"%d" % len(payload))],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        return 200


async def _read_body(receive: Receive, limit: int) -> bytes:
    msg = await receive()
    if msg["type"] != "http.request":
        raise _Disconnected
    body = msg.get("body", b"")
    if not msg.get("more_body", False):
        if len(body) > limit:
            raise _TooLarge
        return body
    chunks = [body]
    size = len(body)
    while True:
        msg = await receive()
        if msg["type"] != "http.request":
            raise _Disconnected
        chunk = msg.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not msg.get("more_body", False):
            return b"".join(chunks)
