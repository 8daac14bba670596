"""A typed Python client of the siteloc API, over httpx: `Client` (sync) and `AsyncClient` (async).

    ClientError               anything that kept a call from getting an answer it could use
    ├── TransportError        no HTTP answer (connection refused, timeout); `detail` says what happened
    └── ApiError              the server answered 4xx/5xx; `status_code`, and `detail` = the server's {"detail"}
        ├── Unauthorized 401, Forbidden 403, NotFound 404, Conflict 409, PayloadTooLarge 413
        ├── Invalid 422, RateLimited 429
        └── Unavailable 503, ServerError (other 5xx)

Answers are parsed into the service's own pydantic schemas (app.schemas). 429 and 503 answers are retried with
exponential backoff (honouring Retry-After); a request that never reached the server (connect error) is retried
too, other transport errors only for GET. `job_wait` polls a job until it ends.

    from app.client import Client
    with Client("http://127.0.0.1:8000", key) as c:
        site = c.create_site("HQ")
        c.upload_survey_file(site.id, "F1.tar.xz", fmt="ilc2020")
        job = c.job_wait(c.finetune(site.id, model="wknn"))
        print(c.locate(site_id=site.id, wifi=[{"bssid": "aa:bb:cc:00:00:01", "rssi": -50}]).x)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, TypeAdapter

from app.schemas.api import (
    FinetuneIn,
    JobOut,
    JobRef,
    KeyCreate,
    KeyOut,
    LocateBatchOut,
    LocateIn,
    LocateOut,
    ModelVersionOut,
    PlanOut,
    SiteCreate,
    SiteOut,
    SurveyOut,
)
from app.schemas.browse import JobsOut, KeyInfo, KeysOut, ModelVersionDetail, QueriesOut, SurveyPointsOut

# -- errors --------------------------------------------------------------------------------------


class ClientError(Exception):
    def __init__(self, detail: Any) -> None:
        super().__init__(detail if isinstance(detail, str) else repr(detail))
        self.detail = detail


class TransportError(ClientError):
    pass


class ApiError(ClientError):
    status_code = 0

    def __init__(self, detail: Any, *, status_code: int | None = None) -> None:
        super().__init__(detail)
        if status_code is not None:
            self.status_code = status_code

    def __str__(self) -> str:
        detail = self.detail if isinstance(self.detail, str) else _format_detail(self.detail)
        return f"{self.status_code}: {detail}"


class Unauthorized(ApiError):
    status_code = 401


class Forbidden(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    status_code = 409


class PayloadTooLarge(ApiError):
    status_code = 413


class Invalid(ApiError):
    status_code = 422


class RateLimited(ApiError):
    status_code = 429


class Unavailable(ApiError):
    status_code = 503


class ServerError(ApiError):
    status_code = 500


_BY_STATUS: dict[int, type[ApiError]] = {
    c.status_code: c
    for c in (Unauthorized, Forbidden, NotFound, Conflict, PayloadTooLarge, Invalid, RateLimited, Unavailable)
}
RETRY_STATUS = frozenset({429, 503})
TERMINAL_JOB_STATES = frozenset({"succeeded", "failed"})


def _format_detail(detail: Any) -> str:
    """FastAPI's validation errors ([{"loc": [...], "msg": ...}]) as one readable line."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict) and "msg" in item:
                loc = ".".join(str(x) for x in item.get("loc", ()) if x != "body")
                parts.append(f"{loc}: {item['msg']}" if loc else str(item["msg"]))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


def error_for(response: httpx.Response) -> ApiError:
    """The one place an HTTP error answer becomes an exception."""
    try:
        body = response.json()
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:
        detail = response.text.strip() or response.reason_phrase
    status = response.status_code
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else ApiError)
    return cls(detail, status_code=status)


# -- requests, shared by both clients -----------------------------------------------------------

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@dataclass
class _Req:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    # Called once per attempt (a retried upload reopens its file).
    files: Callable[[], dict[str, Any]] | None = None
    data: dict[str, Any] | None = None
    timeout: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _dump(body: BaseModel | Mapping[str, Any] | None, schema: type[BaseModel], /, **kwargs: Any) -> dict[str, Any]:
    """A request body validated with the server's own schema (so a typo fails here, not as a 422)."""
    if body is None:
        body = schema.model_validate(kwargs)
    elif not isinstance(body, BaseModel):
        raw = {**body, **kwargs}
        # Fields this build's schema does not know (a newer server's) are sent as given.
        extra = {k: v for k, v in raw.items() if k not in schema.model_fields}
        return schema.model_validate(raw).model_dump(mode="json", exclude_none=True) | extra
    return body.model_dump(mode="json", exclude_none=True)


class _CountingReader:
    """A binary file that reports how many bytes were read from it (an upload's progress)."""

    def __init__(self, raw: Any, progress: Callable[[int], None]) -> None:
        self._raw = raw
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        chunk: bytes = self._raw.read(size)
        if chunk:
            self._progress(len(chunk))
        return chunk

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


_SITES = TypeAdapter(list[SiteOut])
_VERSIONS = TypeAdapter(list[ModelVersionOut])


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 4  # extra attempts after the first
    backoff_s: float = 0.5  # first wait; doubles each time
    max_backoff_s: float = 8.0

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        retry_after = response.headers.get("Retry-After") if response is not None else None
        if retry_after is not None:
            try:
                return min(float(retry_after), self.max_backoff_s)
            except ValueError:
                pass
        return min(self.backoff_s * 2**attempt, self.max_backoff_s)


def _should_retry(req: _Req, exc: httpx.TransportError | None, response: httpx.Response | None) -> bool:
    if response is not None:
        return response.status_code in RETRY_STATUS
    # A connect error never reached the server; anything later only for reads.
    return isinstance(exc, httpx.ConnectError) or req.method == "GET"


def _headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


class _Base:
    """Request builders (one per endpoint) shared by Client and AsyncClient."""

    @staticmethod
    def _finetune(site_id: str, body: FinetuneIn | Mapping[str, Any] | None, kwargs: dict[str, Any]) -> _Req:
        return _Req("POST", f"/sites/{site_id}/finetune", json=_dump(body, FinetuneIn, **kwargs))

    @staticmethod
    def _upload(
        site_id: str,
        path: str | Path,
        fmt: str,
        timeout: float,
        progress: Callable[[int], None] | None = None,
        window_stride_ms: int | None = None,
    ) -> _Req:
        path = Path(path)

        def files() -> dict[str, Any]:
            fh: Any = path.open("rb") if progress is None else _CountingReader(path.open("rb"), progress)
            return {"file": (path.name, fh, "application/octet-stream")}

        data = {"format": fmt} | ({"window_stride_ms": str(window_stride_ms)} if window_stride_ms is not None else {})
        return _Req("POST", f"/sites/{site_id}/surveys", files=files, data=data, timeout=timeout)

    @staticmethod
    def _locate(body: LocateIn | Mapping[str, Any] | None, kwargs: dict[str, Any]) -> _Req:
        return _Req("POST", "/locate", json=_dump(body, LocateIn, **kwargs))

    @staticmethod
    def _locate_batch(queries: Iterable[LocateIn | Mapping[str, Any]]) -> _Req:
        return _Req("POST", "/locate/batch", json={"queries": [_dump(q, LocateIn) for q in queries]})


# -- sync ----------------------------------------------------------------------------------------


class Client(_Base):
    """Synchronous client. `Client(url, key)`; use as a context manager or call close()."""

    def __init__(
        self,
        base_url: str,
        key: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), headers=_headers(key), timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, req: _Req) -> httpx.Response:
        attempt = 0
        while True:
            response: httpx.Response | None = None
            error: httpx.TransportError | None = None
            try:
                response = self._http.request(
                    req.method,
                    req.path,
                    params=req.params,
                    json=req.json,
                    files=req.files() if req.files else None,
                    data=req.data,
                    timeout=req.timeout if req.timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                error = exc
            if response is not None and response.status_code < 400:
                return response
            if attempt < self.retry.retries and _should_retry(req, error, response):
                time.sleep(self.retry.delay(attempt, response))
                attempt += 1
                continue
            if response is None:
                raise TransportError(f"{req.method} {self._http.base_url}{req.path}: {error}") from error
            raise error_for(response)

    def _model(self, req: _Req, model: type[M]) -> M:
        return model.model_validate(self._send(req).json())

    # sites and surveys
    def sites(self) -> list[SiteOut]:
        return _SITES.validate_python(self._send(_Req("GET", "/sites")).json())

    def site(self, site_id: str) -> SiteOut:
        return self._model(_Req("GET", f"/sites/{site_id}"), SiteOut)

    def create_site(self, name: str, floors: list[str] | None = None) -> SiteOut:
        return self._model(_Req("POST", "/sites", json=_dump(None, SiteCreate, name=name, floors=floors)), SiteOut)

    def upload_survey(self, site_id: str, fingerprints: list[Mapping[str, Any]]) -> SurveyOut:
        return self._model(_Req("POST", f"/sites/{site_id}/surveys", json={"fingerprints": fingerprints}), SurveyOut)

    def upload_survey_file(
        self,
        site_id: str,
        path: str | Path,
        *,
        fmt: str,
        timeout: float = 3600,
        progress: Callable[[int], None] | None = None,
        window_stride_ms: int | None = None,
    ) -> SurveyOut:
        """A survey file, streamed (`fmt` = ujiindoorloc | ilc2020 | jsonl; `window_stride_ms` for ilc2020);
        `progress(n)` is called with the bytes sent since its last call."""
        return self._model(self._upload(site_id, path, fmt, timeout, progress, window_stride_ms), SurveyOut)

    def survey_points(self, site_id: str, *, floor: str | None = None, limit: int = 5000) -> SurveyPointsOut:
        params = {"limit": limit} | ({"floor": floor} if floor is not None else {})
        return self._model(_Req("GET", f"/sites/{site_id}/survey/points", params=params), SurveyPointsOut)

    def queries(self, site_id: str, *, limit: int = 500) -> QueriesOut:
        return self._model(_Req("GET", f"/sites/{site_id}/queries", params={"limit": limit}), QueriesOut)

    # training, jobs, models
    def finetune(self, site_id: str, body: FinetuneIn | Mapping[str, Any] | None = None, **kwargs: Any) -> str:
        """Start a finetune; returns the job id. `finetune(site, model="wknn", seed=1)`."""
        return self._model(self._finetune(site_id, body, kwargs), JobRef).job_id

    def cotrain(self, site_id: str, **body: Any) -> str:
        return self._model(_Req("POST", f"/sites/{site_id}/cotrain", json=body or None), JobRef).job_id

    def job(self, job_id: str) -> JobOut:
        return self._model(_Req("GET", f"/jobs/{job_id}"), JobOut)

    def jobs(self, *, site_id: str | None = None, limit: int = 50) -> list[JobOut]:
        params = {"limit": limit} | ({"site_id": site_id} if site_id else {})
        return self._model(_Req("GET", "/jobs", params=params), JobsOut).jobs

    def job_wait(
        self,
        job_id: str,
        *,
        timeout: float = 3600,
        poll_s: float = 0.5,
        on_update: Callable[[JobOut], None] | None = None,
    ) -> JobOut:
        """Poll until the job ends (succeeded or failed; it does not raise on failure); TimeoutError past
        `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_update is not None:
                on_update(job)
            if job.state in TERMINAL_JOB_STATES:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout:g} s")
            time.sleep(poll_s)

    def models(self, site_id: str) -> list[ModelVersionOut]:
        return _VERSIONS.validate_python(self._send(_Req("GET", f"/sites/{site_id}/models")).json())

    def model(self, site_id: str, version: int) -> ModelVersionDetail:
        return self._model(_Req("GET", f"/sites/{site_id}/models/{version}"), ModelVersionDetail)

    def activate(self, site_id: str, version: int) -> ModelVersionOut:
        return self._model(_Req("POST", f"/sites/{site_id}/models/{version}/activate"), ModelVersionOut)

    def put_plan(self, site_id: str, floor: str, plan: Mapping[str, Any]) -> PlanOut:
        """Set a floor's walkable area (a GeoJSON FeatureCollection in site metres)."""
        return self._model(
            _Req("PUT", f"/sites/{site_id}/floors/{quote(floor, safe='')}/plan", json=dict(plan)), PlanOut
        )

    # locate
    def locate(self, body: LocateIn | Mapping[str, Any] | None = None, **kwargs: Any) -> LocateOut:
        return self._model(self._locate(body, kwargs), LocateOut)

    def locate_batch(self, queries: Iterable[LocateIn | Mapping[str, Any]]) -> list[LocateOut]:
        return self._model(self._locate_batch(queries), LocateBatchOut).results

    # keys
    def create_key(self, role: str, *, sites: list[str] | None = None, name: str = "") -> KeyOut:
        body = _dump(None, KeyCreate, role=role, sites=sites, name=name)
        return self._model(_Req("POST", "/keys", json=body), KeyOut)

    def list_keys(self, *, include_revoked: bool = False) -> list[KeyInfo]:
        params = {"include_revoked": str(include_revoked).lower()}
        return self._model(_Req("GET", "/keys", params=params), KeysOut).keys

    def revoke_key(self, key_id: str) -> None:
        self._send(_Req("DELETE", f"/keys/{key_id}"))

    # health
    def readyz(self) -> dict[str, Any]:
        """The readiness answer (a not-ready service raises Unavailable after the retries)."""
        return dict(self._send(_Req("GET", "/readyz")).json())


# -- async ---------------------------------------------------------------------------------------


class AsyncClient(_Base):
    """The same calls as Client, awaitable. `async with AsyncClient(url, key) as c: await c.locate(...)`."""

    def __init__(
        self,
        base_url: str,
        key: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        self.retry = retry or RetryPolicy()
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers=_headers(key),
            timeout=timeout,
            transport=transport,
            limits=limits or httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, req: _Req) -> httpx.Response:
        attempt = 0
        while True:
            response: httpx.Response | None = None
            error: httpx.TransportError | None = None
            try:
                response = await self._http.request(
                    req.method,
                    req.path,
                    params=req.params,
                    json=req.json,
                    files=req.files() if req.files else None,
                    data=req.data,
                    timeout=req.timeout if req.timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                error = exc
            if response is not None and response.status_code < 400:
                return response
            if attempt < self.retry.retries and _should_retry(req, error, response):
                await asyncio.sleep(self.retry.delay(attempt, response))
                attempt += 1
                continue
            if response is None:
                raise TransportError(f"{req.method} {self._http.base_url}{req.path}: {error}") from error
            raise error_for(response)

    async def _model(self, req: _Req, model: type[M]) -> M:
        return model.model_validate((await self._send(req)).json())

    async def sites(self) -> list[SiteOut]:
        return _SITES.validate_python((await self._send(_Req("GET", "/sites"))).json())

    async def site(self, site_id: str) -> SiteOut:
        return await self._model(_Req("GET", f"/sites/{site_id}"), SiteOut)

    async def create_site(self, name: str, floors: list[str] | None = None) -> SiteOut:
        body = _dump(None, SiteCreate, name=name, floors=floors)
        return await self._model(_Req("POST", "/sites", json=body), SiteOut)

    async def upload_survey(self, site_id: str, fingerprints: list[Mapping[str, Any]]) -> SurveyOut:
        req = _Req("POST", f"/sites/{site_id}/surveys", json={"fingerprints": fingerprints})
        return await self._model(req, SurveyOut)

    async def upload_survey_file(
        self,
        site_id: str,
        path: str | Path,
        *,
        fmt: str,
        timeout: float = 3600,
        progress: Callable[[int], None] | None = None,
        window_stride_ms: int | None = None,
    ) -> SurveyOut:
        return await self._model(self._upload(site_id, path, fmt, timeout, progress, window_stride_ms), SurveyOut)

    async def survey_points(self, site_id: str, *, floor: str | None = None, limit: int = 5000) -> SurveyPointsOut:
        params = {"limit": limit} | ({"floor": floor} if floor is not None else {})
        return await self._model(_Req("GET", f"/sites/{site_id}/survey/points", params=params), SurveyPointsOut)

    async def queries(self, site_id: str, *, limit: int = 500) -> QueriesOut:
        return await self._model(_Req("GET", f"/sites/{site_id}/queries", params={"limit": limit}), QueriesOut)

    async def cotrain(self, site_id: str, **body: Any) -> str:
        return (await self._model(_Req("POST", f"/sites/{site_id}/cotrain", json=body or None), JobRef)).job_id

    async def jobs(self, *, site_id: str | None = None, limit: int = 50) -> list[JobOut]:
        params = {"limit": limit} | ({"site_id": site_id} if site_id else {})
        return (await self._model(_Req("GET", "/jobs", params=params), JobsOut)).jobs

    async def model(self, site_id: str, version: int) -> ModelVersionDetail:
        return await self._model(_Req("GET", f"/sites/{site_id}/models/{version}"), ModelVersionDetail)

    async def create_key(self, role: str, *, sites: list[str] | None = None, name: str = "") -> KeyOut:
        body = _dump(None, KeyCreate, role=role, sites=sites, name=name)
        return await self._model(_Req("POST", "/keys", json=body), KeyOut)

    async def list_keys(self, *, include_revoked: bool = False) -> list[KeyInfo]:
        params = {"include_revoked": str(include_revoked).lower()}
        return (await self._model(_Req("GET", "/keys", params=params), KeysOut)).keys

    async def revoke_key(self, key_id: str) -> None:
        await self._send(_Req("DELETE", f"/keys/{key_id}"))

    async def readyz(self) -> dict[str, Any]:
        return dict((await self._send(_Req("GET", "/readyz"))).json())

    async def finetune(self, site_id: str, body: FinetuneIn | Mapping[str, Any] | None = None, **kwargs: Any) -> str:
        return (await self._model(self._finetune(site_id, body, kwargs), JobRef)).job_id

    async def job(self, job_id: str) -> JobOut:
        return await self._model(_Req("GET", f"/jobs/{job_id}"), JobOut)

    async def job_wait(
        self,
        job_id: str,
        *,
        timeout: float = 3600,
        poll_s: float = 0.5,
        on_update: Callable[[JobOut], None] | None = None,
    ) -> JobOut:
        deadline = time.monotonic() + timeout
        while True:
            job = await self.job(job_id)
            if on_update is not None:
                on_update(job)
            if job.state in TERMINAL_JOB_STATES:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state} after {timeout:g} s")
            await asyncio.sleep(poll_s)

    async def models(self, site_id: str) -> list[ModelVersionOut]:
        return _VERSIONS.validate_python((await self._send(_Req("GET", f"/sites/{site_id}/models"))).json())

    async def activate(self, site_id: str, version: int) -> ModelVersionOut:
        return await self._model(_Req("POST", f"/sites/{site_id}/models/{version}/activate"), ModelVersionOut)

    async def put_plan(self, site_id: str, floor: str, plan: Mapping[str, Any]) -> PlanOut:
        return await self._model(
            _Req("PUT", f"/sites/{site_id}/floors/{quote(floor, safe='')}/plan", json=dict(plan)), PlanOut
        )

    async def locate(self, body: LocateIn | Mapping[str, Any] | None = None, **kwargs: Any) -> LocateOut:
        return await self._model(self._locate(body, kwargs), LocateOut)

    async def locate_batch(self, queries: Iterable[LocateIn | Mapping[str, Any]]) -> list[LocateOut]:
        return (await self._model(self._locate_batch(queries), LocateBatchOut)).results
