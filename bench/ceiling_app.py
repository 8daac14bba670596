"""The framework ceiling for `bench.locate_load`: a bare FastAPI + pydantic app that validates the same
`/locate` bodies (siteloc's own `LocateIn` schema), checks that an Authorization header is present and answers
a constant. No database, no model, no middleware: what FastAPI + uvicorn serve on this machine at best.

    python -m uvicorn bench.ceiling_app:app --workers N --port P
"""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import FastAPI, Header, HTTPException, Response

from app.schemas.api import LocateIn

app = FastAPI(title="siteloc framework ceiling")

_ANSWER = orjson.dumps(
    {
        "site_id": "ceiling",
        "x": 1.0,
        "y": 2.0,
        "floor": "0",
        "error_m": 3.0,
        "model": {"name": "none", "version": 1},
        "query_id": "0",
    }
)


@app.post("/locate")
async def locate(body: LocateIn, authorization: Annotated[str | None, Header()] = None) -> Response:
    if not authorization:
        raise HTTPException(401, "missing Authorization header")
    return Response(_ANSWER, media_type="application/json")


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
