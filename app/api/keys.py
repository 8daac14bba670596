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
def delete_key(key_id: str, rt: RuntimeDep, _admin: AdminKey) -> Response:
    with rt.db.session() as s:
        svc.revoke_key(s, key_id=key_id)
    rt.auth.forget()  # this process stops accepting it at once; others within key_cache_seconds
    return Response(status_code=status.HTTP_204_NO_CONTENT)
