"""/locate: the hot path. Answers are stored (group commit) before they are returned."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from app.deps import AnyKey, RuntimeDep
from app.errors import PayloadTooLarge
from app.schemas.api import LocateBatchIn, LocateBatchOut, LocateIn, LocateOut

router = APIRouter(tags=["locate"])

M = TypeVar("M", bound=BaseModel)


def _json(payload: object) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


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


@router.post(
    "/locate", response_model=LocateOut, response_model_exclude_none=True, openapi_extra=_body_schema("LocateIn")
)
async def locate(request: Request, rt: RuntimeDep, principal: AnyKey) -> Response:
    """Where is this phone? Omit `site_id` to detect the site from the scan."""
    body = _parse(LocateIn, await request.body())
    return _json((await rt.locator.locate([body], principal))[0])


@router.post(
    "/locate/batch",
    response_model=LocateBatchOut,
    response_model_exclude_none=True,
    openapi_extra=_body_schema("LocateBatchIn"),
)
async def locate_batch(request: Request, rt: RuntimeDep, principal: AnyKey) -> Response:
    """Several queries at once (each may name its own site); results in order. All or nothing."""
    body = _parse(LocateBatchIn, await request.body())
    if len(body.queries) > rt.settings.max_batch_queries:
        raise PayloadTooLarge(f"{len(body.queries)} queries in one batch; the limit is {rt.settings.max_batch_queries}")
    return _json({"results": await rt.locator.locate(body.queries, principal)})
