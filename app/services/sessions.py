"""Tracking sessions: a `/locate` with a `session_id` is answered by the session's particle filter.

The model answers the WiFi scan as usual; `Tracker.update` then feeds that fix (and the query's sensor window)
to the session's filter (`ml.tracking.filter`) and returns the filter's causal estimate instead. State lives in
a `SessionStore`: Redis in full mode (any API process continues any session; each update is one
read-modify-write under a per-session lock), a dict in embedded mode. A session expires after
`SITELOC_SESSION_TTL_S` of silence and belongs to the key that opened it: another key is told it does not exist.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar

import numpy as np

from app.errors import Invalid, NotFound, Unavailable
from ml.tracking.filter import Estimate, FilterConfig, Fix, NoPosition, TrackState, step
from ml.tracking.floorplan import Walkable
from ml.tracking.replay import scan_key
from ml.tracking.smooth import smoothed_points
from ml.types import SensorData

T = TypeVar("T")
_LEN = struct.Struct("<I")
_PREFIX = "siteloc:session:"


# ---------------------------------------------------------------- stores


class SessionStore(Protocol):
    def update(self, key: str, fn: Callable[[bytes | None], tuple[bytes, T]]) -> T:
        """Atomically: read the blob (None = no live session), write fn's blob, return fn's value."""
        ...

    def get(self, key: str) -> bytes | None: ...


class MemoryStore:
    """Embedded mode: one process, so a dict with expiry and striped locks is the whole store."""

    def __init__(self, ttl_s: float) -> None:
        self._ttl = ttl_s
        self._data: dict[str, tuple[float, bytes]] = {}
        self._locks = [threading.Lock() for _ in range(64)]
        self._sweep_at = time.monotonic() + ttl_s

    def _lock(self, key: str) -> threading.Lock:
        return self._locks[zlib.crc32(key.encode()) % len(self._locks)]

    def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None or item[0] < time.monotonic():
            return None
        return item[1]

    def update(self, key: str, fn: Callable[[bytes | None], tuple[bytes, T]]) -> T:
        with self._lock(key):
            blob, value = fn(self.get(key))
            self._data[key] = (time.monotonic() + self._ttl, blob)
        self._sweep()
        return value

    def _sweep(self) -> None:
        now = time.monotonic()
        if now < self._sweep_at:
            return
        self._sweep_at = now + self._ttl
        for k, (exp, _) in list(self._data.items()):
            if exp < now:
                self._data.pop(k, None)

    def __len__(self) -> int:
        return len(self._data)


class RedisStore:
    """Full mode: the blob under one key with a TTL; a Redis lock makes each update one atomic step."""

    def __init__(self, url: str, ttl_s: float) -> None:
        import redis

        self._redis = redis.Redis.from_url(url)
        self._ttl_ms = int(ttl_s * 1000)

    def get(self, key: str) -> bytes | None:
        v = self._redis.get(_PREFIX + key)
        return None if v is None else bytes(v)  # type: ignore[arg-type]  # a client without decode_responses

    def update(self, key: str, fn: Callable[[bytes | None], tuple[bytes, T]]) -> T:
        import redis

        try:
            with self._redis.lock(_PREFIX + key + ":lock", timeout=10, blocking_timeout=5):
                blob, value = fn(self.get(key))
                self._redis.set(_PREFIX + key, blob, px=self._ttl_ms)
        except redis.exceptions.LockError as e:
            raise Unavailable("the session is busy (another query of it is being answered); retry") from e
        except redis.exceptions.ConnectionError as e:
            raise Unavailable("session state is unreachable (Redis); retry shortly") from e
        return value

    def close(self) -> None:
        self._redis.close()


class FileStore:
    """Embedded mode: one file per session under a folder of the data dir, updated under an exclusive `flock`, so
    the several API processes of `siteloc serve --workers N` (sharing one SQLite file) continue each other's
    sessions, as Redis lets full mode's processes do. A file older than the TTL is no live session."""

    def __init__(self, folder: Path, ttl_s: float) -> None:
        self._folder = folder
        self._folder.mkdir(parents=True, exist_ok=True)
        self._ttl = ttl_s
        self._sweep_at = time.time() + ttl_s

    def _path(self, key: str) -> Path:
        return self._folder / hashlib.sha256(key.encode()).hexdigest()

    def _read(self, f: BinaryIO) -> bytes | None:
        f.seek(0)
        blob = f.read()
        if not blob or os.fstat(f.fileno()).st_mtime + self._ttl < time.time():
            return None
        return blob

    def get(self, key: str) -> bytes | None:
        try:
            with open(self._path(key), "rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_SH)
                return self._read(f)
        except FileNotFoundError:
            return None

    def update(self, key: str, fn: Callable[[bytes | None], tuple[bytes, T]]) -> T:
        with open(self._path(key), "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when the file is closed
            blob, value = fn(self._read(f))
            f.seek(0)
            f.truncate()
            f.write(blob)
            f.flush()
        self._sweep()
        return value

    def _sweep(self) -> None:
        now = time.time()
        if now < self._sweep_at:
            return
        self._sweep_at = now + self._ttl
        for p in self._folder.iterdir():
            with contextlib.suppress(OSError):
                if p.stat().st_mtime + self._ttl < now:
                    p.unlink()


def make_store(redis_url: str | None, ttl_s: float, folder: Path | None = None) -> MemoryStore | RedisStore | FileStore:
    """Redis in full mode; in embedded mode files under `folder` (the API processes of one data dir share them),
    or this process's memory when there is no folder (an in-memory database)."""
    if redis_url:
        return RedisStore(redis_url, ttl_s)
    return FileStore(folder, ttl_s) if folder is not None else MemoryStore(ttl_s)


# ---------------------------------------------------------------- the tracker


@dataclass
class Session:
    owner: str
    site_id: str
    state: TrackState | None

    def to_bytes(self) -> bytes:
        meta = json.dumps({"owner": self.owner, "site_id": self.site_id}).encode()
        return _LEN.pack(len(meta)) + meta + (self.state.to_bytes() if self.state is not None else b"")

    @classmethod
    def from_bytes(cls, blob: bytes) -> Session:
        (n,) = _LEN.unpack_from(blob)
        meta = json.loads(blob[4 : 4 + n])
        rest = blob[4 + n :]
        return cls(meta["owner"], meta["site_id"], TrackState.from_bytes(rest) if rest else None)


def fix_from_answer(
    x: float, y: float, floor: str, error_m: float, neighbours: tuple[np.ndarray, np.ndarray] | None = None
) -> Fix:
    nb = nw = None
    if neighbours is not None:
        pts, w = neighbours
        keep = w > 0
        if keep.any():
            nb, nw = np.asarray(pts[keep], dtype=np.float64), np.asarray(w[keep], dtype=np.float64)
            nw = nw / nw.sum()
    return Fix(float(x), float(y), str(floor), float(error_m), nb, nw)


@dataclass
class Step:
    """One session query: where, when, its sensor window, the model's fix for its scan (None: no new scan)."""

    site_id: str
    t_ms: int
    sensors: SensorData | None
    fix: Fix | None
    scan: str | None
    where: str = ""


@dataclass
class Advance:
    """A session advanced in memory by one request's queries, not yet written (`Tracker.commit`)."""

    key: str
    owner: str
    session_id: str
    steps: list[Step]
    before: bytes | None
    after: bytes
    estimates: list[Estimate]


class Tracker:
    """Session updates and reads over a store; plans come from a callable (site -> {floor: Walkable}).

    `use_neighbours`: weigh particles by the model's k nearest survey points instead of a Gaussian around its
    answer. Off by default: on an ILC development subset (20 test paths of 4 floors) it was worse (causal 0.94x
    vs 0.89x of the single-query error), the survey points of one scan being as biased as their mean."""

    def __init__(
        self,
        store: SessionStore,
        plans: Callable[[str], dict[str, Walkable]] | None = None,
        cfg: FilterConfig | None = None,
        use_neighbours: bool = False,
    ) -> None:
        self.store = store
        self._plans = plans
        self.cfg = cfg or FilterConfig()
        self.use_neighbours = use_neighbours

    @staticmethod
    def key(owner: str, session_id: str) -> str:
        # The owner is part of the key: another API key cannot even see that the session exists.
        return f"{owner}:{session_id}"

    def check(self, *, owner: str, session_id: str, site_id: str | None, t_ms: int, where: str = "") -> None:
        """Refuse, before anything is answered or stored, a query its session cannot take."""
        blob = self.store.get(self.key(owner, session_id))
        if blob is None:
            return
        s = Session.from_bytes(blob)
        _check(s, site_id, t_ms, session_id, where)

    def site_of(self, *, owner: str, session_id: str) -> str | None:
        blob = self.store.get(self.key(owner, session_id))
        return None if blob is None else Session.from_bytes(blob).site_id

    def update(
        self,
        *,
        owner: str,
        session_id: str,
        site_id: str,
        t_ms: int,
        sensors: SensorData | None,
        fix: Fix | None,
        scan: str | None,
        where: str = "",
    ) -> Estimate:
        """One query: advance the session and write it, as one atomic step."""
        adv = self.advance(owner=owner, session_id=session_id, steps=[Step(site_id, t_ms, sensors, fix, scan, where)])
        return self.commit(adv)[0]

    def advance(self, *, owner: str, session_id: str, steps: list[Step]) -> Advance:
        """Phase 1: the session's state after `steps` (its queries of one request, in order), computed from its
        stored state. Nothing is written: a request that fails afterwards (another query of the batch, the
        storability check) leaves the session as it was."""
        key = self.key(owner, session_id)
        before = self.store.get(key)
        after, estimates = self._run(before, owner, session_id, steps)
        return Advance(key, owner, session_id, steps, before, after, estimates)

    def commit(self, adv: Advance) -> list[Estimate]:
        """Phase 2: write the advanced state atomically. If another request moved the session on meanwhile (two
        queries of one session at once), the steps are run again on the newer state (which may refuse them)."""

        def apply(blob: bytes | None) -> tuple[bytes, list[Estimate]]:
            if blob == adv.before:
                return adv.after, adv.estimates
            return self._run(blob, adv.owner, adv.session_id, adv.steps)

        return self.store.update(adv.key, apply)

    def _run(self, blob: bytes | None, owner: str, session_id: str, steps: list[Step]) -> tuple[bytes, list[Estimate]]:
        seed = zlib.crc32(f"{owner}:{session_id}".encode())
        s = Session.from_bytes(blob) if blob is not None else Session(owner, steps[0].site_id, None)
        out = []
        for st in steps:
            _check(s, st.site_id, st.t_ms, session_id, st.where)
            fix = st.fix
            if fix is not None and not self.use_neighbours:
                fix = Fix(fix.x, fix.y, fix.floor, fix.error_m)
            plans = self._plans(st.site_id) if self._plans is not None else None
            try:
                s.state, est = step(
                    s.state,
                    seed=seed,
                    t_ms=st.t_ms,
                    sensors=st.sensors,
                    fix=fix,
                    scan_key=st.scan,
                    plans=plans,
                    cfg=self.cfg,
                )
            except NoPosition as e:
                raise Invalid(f"{st.where}session {session_id!r}: {e}") from None
            if not all(math.isfinite(v) for v in (est.x, est.y, est.error_m)):
                # a defect, not the client's: refuse the query rather than store a track that answers NaN forever
                raise Invalid(f"{st.where}session {session_id!r}: this query could not be tracked (no finite estimate)")
            out.append(est)
        return s.to_bytes(), out

    def read(self, *, owner: str, session_id: str) -> dict[str, Any]:
        blob = self.store.get(self.key(owner, session_id))
        if blob is None:
            raise NotFound(f"session {session_id!r} not found (never opened by this key, or expired)")
        s = Session.from_bytes(blob)
        pts = s.state.points() if s.state is not None else []
        sm = smoothed_points(s.state) if s.state is not None else []
        return {
            "session_id": session_id,
            "site_id": s.site_id,
            "points": [_point(p) for p in pts],
            "smoothed": [_point(p) for p in sm],
        }


def _check(s: Session, site_id: str | None, t_ms: int, session_id: str, where: str) -> None:
    if site_id is not None and s.site_id != site_id:
        raise Invalid(
            f"{where}session {session_id!r} tracks site {s.site_id!r}, but this query is at site {site_id!r}; "
            "use a new session_id per site"
        )
    if s.state is not None and t_ms < s.state.t_ms:
        raise Invalid(
            f"{where}timestamp {t_ms} is earlier than the session's previous query ({s.state.t_ms}); "
            "timestamps must not decrease within a session"
        )


def _point(p: Estimate) -> dict[str, Any]:
    return {"timestamp": p.t_ms, "x": round(p.x, 3), "y": round(p.y, 3), "floor": p.floor, "error_m": p.error_m}


# ---------------------------------------------------------------- the /locate hook


class SessionHook:
    """What `/locate` calls for queries that carry a `session_id` (see app.services.locate)."""

    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker

    def site_for_motion_only(self, q: Any, owner: str, where: str) -> str:
        """A session query without WiFi is at its session's site."""
        site = self.tracker.site_of(owner=owner, session_id=q.session_id)
        if site is None:
            raise Invalid(f"{where}session {q.session_id!r} has no position yet: its first query needs a WiFi scan")
        return str(site)

    def check(self, queries: list[Any], site_ids: list[str], owner: str) -> None:
        many = len(queries) > 1
        for i, (q, site) in enumerate(zip(queries, site_ids, strict=True)):
            if q.session_id is not None:
                where = f"queries[{i}]: " if many else ""
                self.tracker.check(owner=owner, session_id=q.session_id, site_id=site, t_ms=q.timestamp, where=where)

    def advance(
        self,
        queries: list[Any],
        neighbours: list[tuple[np.ndarray, np.ndarray] | None],
        sensors: list[SensorData | None],
        outs: list[dict[str, Any]],
        rows: list[dict[str, Any]],
        owner: str,
    ) -> list[tuple[Advance, list[int]]]:
        """Phase 1: replace each session query's answer (and its query-log row) by its session's causal estimate,
        every session of the request advanced in memory, its queries in order. Nothing is written yet: see
        `commit`, called once the whole request is known to be answerable."""
        many = len(queries) > 1
        by_session: dict[str, list[int]] = {}
        for i, q in enumerate(queries):
            if q.session_id is not None:
                by_session.setdefault(q.session_id, []).append(i)
        pending = []
        for session_id, idx in by_session.items():
            steps = []
            for i in idx:
                q, out = queries[i], outs[i]
                fix = (
                    fix_from_answer(out["x"], out["y"], out["floor"], out["error_m"], neighbours[i]) if q.wifi else None
                )
                scan = scan_key([(e.bssid, e.rssi) for e in q.wifi])
                where = f"queries[{i}]: " if many else ""
                steps.append(Step(out["site_id"], int(q.timestamp), sensors[i], fix, scan, where))
            adv = self.tracker.advance(owner=owner, session_id=session_id, steps=steps)
            _fill(adv.estimates, idx, queries, outs, rows)
            pending.append((adv, idx))
        return pending

    def commit(
        self,
        pending: list[tuple[Advance, list[int]]],
        queries: list[Any],
        outs: list[dict[str, Any]],
        rows: list[dict[str, Any]],
    ) -> None:
        """Phase 2: write every advanced session (the answers change only if a concurrent request of the same
        session got in between)."""
        for adv, idx in pending:
            estimates = self.tracker.commit(adv)
            if estimates is not adv.estimates:
                _fill(estimates, idx, queries, outs, rows)


def _fill(
    estimates: list[Estimate],
    idx: list[int],
    queries: list[Any],
    outs: list[dict[str, Any]],
    rows: list[dict[str, Any]],
) -> None:
    for est, i in zip(estimates, idx, strict=True):
        answer = {"x": est.x, "y": est.y, "floor": est.floor, "error_m": est.error_m}
        outs[i].update(answer, session_id=queries[i].session_id)
        rows[i].update(answer, session_id=queries[i].session_id)
