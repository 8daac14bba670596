"""API keys (admin only). The plaintext key is shown once, at creation; only its hash is stored."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.deps import AdminKey, RuntimeDep, SessionDep
from app.schemas.api import KeyCreate, KeyOut
from app.services import keys as svc

router = APIRouter(tags=["keys"])


@router.post("/keys", status_code=status.HTTP_201_CREATED, response_model=KeyOut)
def create_key(body: KeyCreate, s: SessionDep, _admin: AdminKey) -> KeyOut:
    key, plaintext = svc.create_key(s, body=body)
    return KeyOut(id=key.id, key=plaintext, role=key.role, sites=key.sites, name=key.name, created_at=key.created_at)


@router.delete("/keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_key(key_id: str, s: SessionDep, rt: RuntimeDep, _admin: AdminKey) -> Response:
    # Committed before the response; this process stops accepting the key at once, others within key_cache_seconds.
    svc.revoke_key(s, key_id=key_id, authenticator=rt.auth)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
