"""API keys: generation, hashing, and the principal a request acts as."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from app.errors import Forbidden

ROLES = ("app", "operator", "admin")


def new_key() -> str:
    return "sl_" + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    # Keys are 256-bit random strings, so a plain SHA-256 is not brute-forceable; no salt needed.
    return hashlib.sha256(key.encode()).hexdigest()


def same_key(key: str, expected: str) -> bool:
    return hmac.compare_digest(hash_key(key), hash_key(expected))


@dataclass(frozen=True, slots=True)
class Principal:
    key_id: str
    role: str
    sites: frozenset[str] | None  # None = every site

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_see_site(self, site_id: str) -> bool:
        return self.is_admin or self.sites is None or site_id in self.sites

    def require_role(self, *roles: str) -> None:
        if self.role not in roles:
            raise Forbidden(f"this needs a key with role {' or '.join(roles)}; this key's role is {self.role!r}")

    def require_site(self, site_id: str) -> None:
        if not self.may_see_site(site_id):
            raise Forbidden(f"this key is not allowed to act on site {site_id!r}")
