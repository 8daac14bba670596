"""FastAPI dependencies: the runtime, a database session, the authenticated principal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from app.runtime import Runtime
from app.security import Principal


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(rt: RuntimeDep) -> Iterator[Session]:
    """One transaction per request: committed when the route returns, rolled back on any error."""
    with rt.db.session() as s:
        yield s


SessionDep = Annotated[Session, Depends(get_session)]


def get_principal(rt: RuntimeDep, authorization: Annotated[str | None, Header()] = None) -> Principal:
    return rt.auth.authenticate(authorization)


def _role(*roles: str) -> Callable[[Principal], Principal]:
    def dep(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        principal.require_role(*roles)
        return principal

    return dep


AnyKey = Annotated[Principal, Depends(get_principal)]
OperatorKey = Annotated[Principal, Depends(_role("operator", "admin"))]
AdminKey = Annotated[Principal, Depends(_role("admin"))]
