"""Pure ASGI middleware: request body limits (413) and Prometheus request metrics.

Body limits are per route and checked before anything is parsed: a /locate body (one scan) is refused above
`max_locate` bytes from its Content-Length, or as soon as that many bytes have streamed in, so one huge request
cannot hold the event loop or memory while it is validated."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter("siteloc_http_requests_total", "HTTP requests", ["method", "route", "status"])
LATENCY = Histogram(
    "siteloc_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
)


class _TooLarge(HTTPException):
    """An HTTPException so that FastAPI's body parsing re-raises it (instead of turning it into a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body larger than the limit of {limit} bytes")


class BodyLimit:
    """Refuse bodies over the limit with 413, whether or not Content-Length is sent."""

    def __init__(self, app: ASGIApp, *, max_body: int, max_upload: int, max_locate: int | None = None) -> None:
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload
        self.max_locate = max_body if max_locate is None else min(max_locate, max_body)

    def _limit(self, scope: Scope) -> int:
        path = scope["path"]
        if path == "/locate" or path == "/locate/":
            return self.max_locate
        headers = dict(scope.get("headers") or [])
        ctype = headers.get(b"content-type", b"").lower()
        if ctype.startswith(b"multipart/form-data") and path.endswith("/surveys"):
            return self.max_upload
        return self.max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            await too_large_body(send, limit)
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await too_large_body(send, limit)


async def too_large_body(send: Send, limit: int) -> None:
    body = b'{"detail":"request body larger than the limit of %d bytes"}' % limit
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Metrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route_of(scope)
            REQUESTS.labels(scope["method"], route, str(status)).inc()
            LATENCY.labels(scope["method"], route).observe(time.perf_counter() - t0)


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    return getattr(route, "path", "unmatched")
