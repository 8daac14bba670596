"""/locate: the hot path. Answers are stored (group commit) before they are returned."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Response

from app.deps import AnyKey, RuntimeDep
from app.errors import PayloadTooLarge
from app.schemas.api import LocateBatchIn, LocateBatchOut, LocateIn, LocateOut

router = APIRouter(tags=["locate"])


def _json(payload: object) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


@router.post("/locate", response_model=LocateOut, response_model_exclude_none=True)
async def locate(body: LocateIn, rt: RuntimeDep, principal: AnyKey) -> Response:
    """Where is this phone? Omit `site_id` to detect the site from the scan."""
    return _json((await rt.locator.locate([body], principal))[0])


@router.post("/locate/batch", response_model=LocateBatchOut, response_model_exclude_none=True)
async def locate_batch(body: LocateBatchIn, rt: RuntimeDep, principal: AnyKey) -> Response:
    """Several queries at once (each may name its own site); results in order. All or nothing."""
    if len(body.queries) > rt.settings.max_batch_queries:
        raise PayloadTooLarge(f"{len(body.queries)} queries in one batch; the limit is {rt.settings.max_batch_queries}")
    return _json({"results": await rt.locator.locate(body.queries, principal)})
