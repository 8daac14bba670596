"""API keys: generation, hashing, and the principal a request acts as."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass

from prometheus_client import Counter

from app.config import Settings
from app.errors import Forbidden, TooManyRequests

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


# -- rate limits --------------------------------------------------------------------------------------------------
#
# Token buckets: each key (and each client address that fails authentication) has `burst` tokens, refilled at
# `rate` per second; a request takes one, and without one it gets 429 with Retry-After. In full mode the buckets
# live in Redis (one atomic Lua call), so every API process shares them; in embedded mode in this process. A Redis
# round trip per /locate would cost more than the answer itself, so a process takes tokens from Redis in leases of
# up to 5% of the burst (at most a second's worth, kept at most a second) and spends them locally: a process may
# run ahead of the shared bucket by one lease. Small limits lease one token at a time (exact). When Redis is
# unreachable the limiter falls back to this process's buckets for a few seconds: rate limiting must never take
# /locate down with it.

RATE_LIMITED = Counter("siteloc_rate_limited_total", "Requests refused with 429 by a rate limit", ["limit"])

_LUA = """
local tokens = tonumber(redis.call('HGET', KEYS[1], 't'))
local stamp = tonumber(redis.call('HGET', KEYS[1], 's'))
local rate, burst, now, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if tokens == nil then tokens = burst; stamp = now end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local got = math.min(want, math.floor(tokens))
local wait = 0
if got >= 1 then tokens = tokens - got else got = 0; wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 's', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return {got, tostring(wait)}
"""


@dataclass(frozen=True, slots=True)
class Limit:
    rate: float  # tokens per second; 0 = unlimited
    burst: float


class _LocalBuckets:
    def __init__(self) -> None:
        self._b: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, name: str, limit: Limit, now: float) -> float:
        """Seconds to wait before a token is available (0 = taken now)."""
        with self._lock:
            if len(self._b) > 100_000:
                self._b.clear()
            tokens, stamp = self._b.get(name, (limit.burst, now))
            tokens = min(limit.burst, tokens + max(0.0, now - stamp) * limit.rate)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / limit.rate
            self._b[name] = (tokens, now)
            return wait


class RateLimiter:
    """Per-key limits by role and a per-address limit on failed authentication."""

    def __init__(self, *, limits: dict[str, Limit], redis_url: str | None, prefix: str = "siteloc:rl:") -> None:
        self._limits = limits
        self._local = _LocalBuckets()
        self._prefix = prefix
        self._redis = None
        self._script = None
        self._redis_down_until = 0.0
        self._leases: dict[str, tuple[int, float]] = {}  # name -> (tokens left, valid until)
        self._lease_lock = threading.Lock()
        if redis_url:
            import redis

            self._redis = redis.Redis.from_url(redis_url, socket_timeout=0.25, socket_connect_timeout=0.25)
            self._script = self._redis.register_script(_LUA)

    def check(self, limit_name: str, who: str) -> None:
        """Take a token from `who`'s bucket under limit `limit_name`, or raise TooManyRequests."""
        limit = self._limits.get(limit_name)
        if limit is None or limit.rate <= 0:
            return
        wait = self._take(f"{limit_name}:{who}", limit)
        if wait > 0:
            RATE_LIMITED.labels(limit=limit_name).inc()
            raise TooManyRequests(
                f"rate limit {limit_name!r} exceeded ({limit.rate:g} requests/s, bursts of {limit.burst:g}); "
                f"retry in {wait:.2f} s",
                retry_after_s=wait,
            )

    def _take(self, name: str, limit: Limit) -> float:
        now = time.time()
        if self._script is not None and now >= self._redis_down_until:
            with self._lease_lock:
                left, until = self._leases.get(name, (0, 0.0))
                if left > 0 and now < until:
                    self._leases[name] = (left - 1, until)
                    return 0.0
            lease = int(max(1.0, min(limit.burst * 0.05, limit.rate)))
            try:
                got, wait = self._script(keys=[self._prefix + name], args=[limit.rate, limit.burst, now, lease])
            except Exception:  # Redis down or slow: this process's buckets for a while
                self._redis_down_until = now + 5.0
                return self._local.take(name, limit, now)
            if int(got) < 1:
                return float(wait)
            with self._lease_lock:
                if len(self._leases) > 100_000:
                    self._leases.clear()
                self._leases[name] = (int(got) - 1, now + 1.0)
            return 0.0
        return self._local.take(name, limit, now)


def rate_limiter(settings: Settings) -> RateLimiter:
    """The limits of `settings`: one per role, and "auth_failures" per client address."""
    limits = {
        "app": Limit(settings.rate_limit_app_per_s, settings.rate_limit_app_burst),
        "operator": Limit(settings.rate_limit_operator_per_s, settings.rate_limit_operator_burst),
        "admin": Limit(settings.rate_limit_admin_per_s, settings.rate_limit_admin_burst),
        "auth_failures": Limit(settings.rate_limit_auth_failures_per_s, settings.rate_limit_auth_failures_burst),
    }
    return RateLimiter(limits=limits, redis_url=settings.redis_url)
