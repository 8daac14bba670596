"""API keys: create, revoke, authenticate (with a short in-process cache for the hot path)."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import Database
from app.errors import Invalid, NotFound, Unauthorized
from app.models import ApiKey, Site
from app.schemas.api import KeyCreate
from app.security import Principal, hash_key, new_key, same_key
from app.services.ids import new_id

BOOTSTRAP_KEY_ID = "bootstrap"


def create_key(s: Session, *, body: KeyCreate) -> tuple[ApiKey, str]:
    """A new key; the plaintext is returned once and never stored."""
    sites = None
    if body.sites is not None:
        sites = list(dict.fromkeys(body.sites))
        known = set(s.scalars(select(Site.id).where(Site.id.in_(sites))))
        missing = [x for x in sites if x not in known]
        if missing:
            raise Invalid(f"unknown site(s) for the key's scope: {', '.join(missing)}")
    if body.role == "admin" and sites is not None:
        raise Invalid("an admin key acts on every site; leave 'sites' out")
    plaintext = new_key()
    key = ApiKey(
        id=new_id(), name=body.name, role=body.role, sites=sites, key_hash=hash_key(plaintext), prefix=plaintext[:10]
    )
    s.add(key)
    s.flush()
    return key, plaintext


def revoke_key(s: Session, *, key_id: str, authenticator: KeyAuthenticator | None = None) -> None:
    """Revoke a key and commit; then `authenticator` (this process's cache) stops accepting it at once, other
    processes within key_cache_seconds."""
    key = s.get(ApiKey, key_id) if len(key_id) <= 32 else None
    if key is None or key.revoked_at is not None:
        raise NotFound(f"key {key_id!r} not found")
    key.revoked_at = datetime.now(UTC)
    s.commit()
    if authenticator is not None:
        authenticator.forget()


def has_admin_key(s: Session) -> bool:
    """Whether any admin key is still valid."""
    return s.scalar(select(ApiKey.id).where(ApiKey.role == "admin", ApiKey.revoked_at.is_(None)).limit(1)) is not None


class KeyAuthenticator:
    """Bearer token -> Principal. Lookups are cached for `ttl_s` (so revocation takes up to that long)."""

    def __init__(self, db: Database, *, bootstrap_key: str | None, ttl_s: float) -> None:
        self._db = db
        self._bootstrap = bootstrap_key
        self._ttl = ttl_s
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def authenticate(self, authorization: str | None) -> Principal:
        """The key's principal (blocking: may read the database)."""
        principal = self.authenticate_cached(authorization)
        if principal is not None:
            return principal
        digest = hash_key(_token(authorization))
        principal = self._lookup(digest)
        with self._lock:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[digest] = (time.monotonic() + self._ttl, principal)
        if principal is None:
            raise Unauthorized("invalid or revoked API key")
        return principal

    def authenticate_cached(self, authorization: str | None) -> Principal | None:
        """The key's principal from memory alone (never blocks), or None when it must be looked up."""
        token = _token(authorization)
        if self._bootstrap and same_key(token, self._bootstrap):
            return Principal(key_id=BOOTSTRAP_KEY_ID, role="admin", sites=None)
        hit = self._cache.get(hash_key(token))
        if hit is None or hit[0] <= time.monotonic():
            return None
        if hit[1] is None:
            raise Unauthorized("invalid or revoked API key")
        return hit[1]

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()

    def _lookup(self, digest: str) -> Principal | None:
        with self._db.session() as s:
            key = s.scalar(select(ApiKey).where(ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)))
            if key is None:
                return None
            return Principal(key_id=key.id, role=key.role, sites=None if key.sites is None else frozenset(key.sites))


def _token(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("missing Authorization header (expected 'Bearer <key>')")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("malformed Authorization header (expected 'Bearer <key>')")
    return token
