"""FastAPI dependencies: the runtime, a database session, the authenticated principal, the site a route acts on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from app.errors import Unauthorized
from app.models import Site
from app.runtime import Runtime
from app.security import Principal
from app.services.sites import get_site


# The dependencies of /locate are `async def` that never block: a plain `def` dependency costs every request
# a hop through the thread pool.
async def get_runtime(request: Request) -> Runtime:
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


async def authenticate(rt: Runtime, authorization: str | None, client_host: str) -> Principal:
    """The key's principal, within its role's rate limit (429); failed attempts are limited per client address.
    Shared by the `AnyKey` dependency and the plain-ASGI /locate path (`app.api.locate`)."""
    try:
        principal = rt.auth.authenticate_cached(authorization)
        if principal is None:  # not cached: a database lookup, off the event loop
            principal = await asyncio.to_thread(rt.auth.authenticate, authorization)
    except Unauthorized:
        rt.limiter.check("auth_failures", client_host)
        raise
    rt.limiter.check(principal.role, principal.key_id)
    return principal


async def get_principal(
    rt: RuntimeDep, request: Request, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    return await authenticate(rt, authorization, request.client.host if request.client else "unknown")


def _role(*roles: str) -> Callable[[Principal], Awaitable[Principal]]:
    async def dep(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
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
