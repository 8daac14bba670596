"""FastAPI dependencies: the runtime, a database session, the authenticated principal, the site a route acts on."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from app.models import Site
from app.runtime import Runtime
from app.security import Principal
from app.services.sites import get_site


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_session(rt: RuntimeDep) -> Iterator[Session]:
    """One transaction per request: committed when the route returns, rolled back on any error. A service that
    must act after the commit (enqueue a job, publish a notice) commits itself first."""
    with rt.db.session() as s:
        yield s


# scope="function": commit before the response is sent. FastAPI's default ("request") runs the code after `yield`
# once the response has gone out, so a client could see 201 for a site its next request cannot find yet.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


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


def scoped_site_id(site_id: str, principal: OperatorKey) -> str:
    """The path's site id, once the key is allowed to act on it (403 otherwise)."""
    principal.require_site(site_id)
    return site_id


ScopedSiteId = Annotated[str, Depends(scoped_site_id)]


def site_of_path(site_id: ScopedSiteId, s: SessionDep) -> Site:
    """The path's site: the key may act on it (403) and it exists (404)."""
    return get_site(s, site_id=site_id)


SiteDep = Annotated[Site, Depends(site_of_path)]
