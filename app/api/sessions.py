"""Tracking sessions: the whole track of a session opened by /locate queries with a session_id."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from app.deps import AnyKey, RuntimeDep
from app.schemas.api import SessionOut

router = APIRouter(tags=["locate"])


@router.get("/sessions/{session_id:path}", response_model=SessionOut)
async def get_session(session_id: str, rt: RuntimeDep, principal: AnyKey) -> dict[str, Any]:
    """The session's answered points and its smoothed track (404 for another key's session, or an expired one).
    A session id may contain "/" (percent-encoded or not)."""
    return await run_in_threadpool(rt.tracker.read, owner=principal.key_id, session_id=session_id)
