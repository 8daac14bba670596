"""Model versions: publishing, activation, listing, and the per-process cache that serves them.

Activation is one transaction: the old active version becomes `retired`, the new
one `active`, and `sites.active_version` changes; a partial unique index keeps
at most one active version per site whatever the interleaving.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db import Database
from app.errors import NotFound
from app.models import ModelVersion, Site
from app.services.inference import BatchExecutor
from app.services.notify import LocalNotifier
from ml.models.base import LocModel
from ml.serialize import loads

log = logging.getLogger(__name__)


def next_version(s: Session, *, site_id: str) -> int:
    current = s.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.site_id == site_id))
    return int(current or 0) + 1


def publish_version(
    s: Session,
    *,
    site_id: str,
    model: str,
    weights: bytes,
    config: dict[str, Any],
    metrics: dict[str, Any] | None,
    training: dict[str, Any],
    source: str,
    job_id: str | None,
    parent_version: int | None = None,
    activate_if_first: bool = True,
) -> ModelVersion:
    """Store a new version (candidate; active if the site has none yet). Caller commits."""
    site = s.get(Site, site_id, with_for_update=True)  # serialises version numbering per site
    if site is None:
        raise NotFound(f"site {site_id!r} not found")
    mv = ModelVersion(
        site_id=site_id,
        version=next_version(s, site_id=site_id),
        model=model,
        status="candidate",
        source=source,
        parent_version=parent_version,
        job_id=job_id,
        config=config,
        weights=weights,
        metrics=metrics,
        training=training,
    )
    s.add(mv)
    s.flush()
    if activate_if_first and site.active_version is None:
        activate(s, site_id=site_id, version=mv.version, reason="first model of the site")
    return mv


def activate(s: Session, *, site_id: str, version: int, reason: str | None = None) -> ModelVersion:
    """Make `version` the site's active model (caller commits; then notify the caches)."""
    site = s.get(Site, site_id, with_for_update=True)
    if site is None:
        raise NotFound(f"site {site_id!r} not found")
    mv = s.scalar(select(ModelVersion).where(ModelVersion.site_id == site_id, ModelVersion.version == version))
    if mv is None:
        raise NotFound(f"site {site_id!r} has no model version {version}")
    if mv.status == "active":
        return mv
    s.execute(
        update(ModelVersion)
        .where(ModelVersion.site_id == site_id, ModelVersion.status == "active")
        .values(status="retired", status_reason=f"replaced by version {version}")
    )
    s.flush()
    mv.status = "active"
    mv.status_reason = reason
    site.active_version = version
    s.flush()
    return mv


def activate_and_notify(
    s: Session, *, site_id: str, version: int, reason: str, notifier: LocalNotifier
) -> ModelVersion:
    """Activate `version`, commit, and only then tell every process's model cache (a cache that reloads on the
    notice must find the new active version)."""
    mv = activate(s, site_id=site_id, version=version, reason=reason)
    s.commit()
    notifier.publish(site_id)
    return mv


def list_versions(s: Session, *, site_id: str) -> list[ModelVersion]:
    """The site's versions, newest first."""
    return list(
        s.scalars(select(ModelVersion).where(ModelVersion.site_id == site_id).order_by(ModelVersion.version.desc()))
    )


@dataclass(frozen=True)
class LoadedModel:
    site_id: str
    version: int
    name: str
    model: LocModel
    ap_index: dict[str, int]
    max_age_ms: float | None
    executor: BatchExecutor  # the model's batching queue: `predict` runs there, never on the event loop
    nbytes: int  # what it counts against the cache budget


class ModelCache:
    """Active models in memory, per process. The hot path is a dict lookup.

    - Load, then swap: a new version is loaded beside the old one, which keeps answering until the
      new one replaces it (an activation never stalls requests).
    - "No active model" and "unknown site" are remembered for `negative_ttl_s`, so a client asking for
      either again and again does not cost a database query per request.
    - The BSSID -> sites index (site detection) is updated incrementally, and keeps the vocabulary of
      every active site, loaded or not.
    - Loaded models are bounded by `max_bytes` (least recently used evicted, reloaded on demand).

    Pick-up of activations made elsewhere: a notice (Redis pub/sub in full mode) reloads the site's
    entry at once; a background poll of `sites.active_version` every `refresh_s` catches anything a
    notice missed.
    """

    def __init__(
        self,
        db: Database,
        *,
        device: str,
        refresh_s: float,
        notifier: LocalNotifier,
        max_bytes: int = 1 << 30,
        negative_ttl_s: float = 2.0,
        batch_rows: int = 64,
        batch_wait_ms: float = 1.0,
    ) -> None:
        self._db = db
        self._device = device
        self._refresh_s = refresh_s
        self._max_bytes = max_bytes
        self._negative_ttl = negative_ttl_s
        self._batch_rows = batch_rows
        self._batch_wait_ms = batch_wait_ms
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self._active: dict[str, int | None] = {}  # last seen sites.active_version
        self._missing: dict[str, float] = {}  # site id -> monotonic time until which "unknown" is believed
        self._vocab: dict[str, frozenset[str]] = {}  # active site -> its model's BSSIDs (kept when evicted)
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.bssid_sites: dict[str, frozenset[str]] = {}
        self.loads = 0
        notifier.subscribe(self.invalidate)

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="siteloc-model-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for m in list(self._models.values()):
                m.executor.close()

    def peek(self, site_id: str) -> LoadedModel | None:
        """The cached model, without loading (the event loop's fast path)."""
        m = self._models.get(site_id)
        if m is not None:
            with contextlib.suppress(KeyError):  # evicted meanwhile: still usable for this request
                self._models.move_to_end(site_id)
        return m

    def get(self, site_id: str) -> LoadedModel | None:
        """The site's active model, loading it when not cached (blocking: call it off the event loop)."""
        m = self.peek(site_id)
        if m is not None:
            return m
        if self._recently_missing(site_id):
            return None
        return self._load(site_id)

    def known_missing(self, site_id: str) -> bool:
        """True when `get` would answer None without touching the database."""
        return site_id not in self._models and self._recently_missing(site_id)

    def site_known(self, site_id: str) -> bool:
        return site_id in self._active

    def sites_with_models(self) -> list[str]:
        return [sid for sid, v in self._active.items() if v is not None]

    def invalidate(self, site_id: str) -> None:
        """The site's active version changed: load the new one, then swap it in (the old one serves meanwhile)."""
        with self._lock:
            self._missing.pop(site_id, None)
        try:
            self._load(site_id, force=True)
        except Exception:  # the poll retries
            log.exception("could not load the newly active model of site %s", site_id)

    def refresh(self) -> None:
        """Re-read which version is active where; reload entries that changed."""
        with self._db.session() as s:
            rows = s.execute(select(Site.id, Site.active_version)).all()
        seen: dict[str, int | None] = {sid: v for sid, v in rows}
        with self._lock:
            stale = [sid for sid, m in list(self._models.items()) if seen.get(sid, -1) != m.version]
            gone = [sid for sid in self._vocab if seen.get(sid) is None]
            self._active = seen
        for sid in gone:
            self._drop(sid)
        for sid in stale:
            if seen.get(sid) is not None:
                try:
                    self._load(sid, force=True)
                except Exception:
                    log.exception("could not load the active model of site %s", sid)
        # Keep every active model loaded while the budget allows (site detection, no cold first query).
        for sid, v in seen.items():
            if v is not None and sid not in self._models and self._used_bytes() < self._max_bytes:
                try:
                    self._load(sid)
                except Exception:
                    log.exception("could not load the active model of site %s", sid)

    def _poll(self) -> None:
        while not self._stop.wait(self._refresh_s):
            try:
                self.refresh()
            except Exception:
                log.warning("model refresh failed; retrying", exc_info=True)

    def _recently_missing(self, site_id: str) -> bool:
        until = self._missing.get(site_id)
        return until is not None and time.monotonic() < until

    def _site_lock(self, site_id: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(site_id, threading.Lock())

    def _load(self, site_id: str, *, force: bool = False) -> LoadedModel | None:
        with self._site_lock(site_id):
            current = self._models.get(site_id)
            if current is not None and not force:
                return current
            with self._db.session() as s:
                site = s.get(Site, site_id)
                active = None if site is None else site.active_version
                if current is not None and current.version == active:
                    return current
                mv = (
                    None
                    if active is None
                    else s.scalar(
                        select(ModelVersion).where(ModelVersion.site_id == site_id, ModelVersion.version == active)
                    )
                )
            if site is None or mv is None:
                with self._lock:
                    self._missing[site_id] = time.monotonic() + self._negative_ttl
                    if site is None:
                        self._active.pop(site_id, None)
                    else:
                        self._active[site_id] = None
                self._drop(site_id)
                return None
            loaded = self._build(site_id, mv)  # the old version keeps serving while this runs
            with self._lock:
                old = self._models.get(site_id)
                self._models[site_id] = loaded
                self._models.move_to_end(site_id)
                self._active[site_id] = mv.version
                self._missing.pop(site_id, None)
                self._set_vocab(site_id, frozenset(loaded.model.aps))
                evicted = self._evict_over_budget(keep=site_id)
            if old is not None:
                old.executor.close()
            for m in evicted:
                m.executor.close()
            return loaded

    def _build(self, site_id: str, mv: ModelVersion) -> LoadedModel:
        t0 = time.perf_counter()
        model = loads(mv.weights, mv.config, device=self._device)
        self.loads += 1
        log.info(
            "loaded %s v%d for site %s in %.0f ms", mv.model, mv.version, site_id, 1000 * (time.perf_counter() - t0)
        )
        return LoadedModel(
            site_id=site_id,
            version=mv.version,
            name=mv.model,
            model=model,
            ap_index={b: i for i, b in enumerate(model.aps)},
            max_age_ms=model.max_age_ms(),
            executor=BatchExecutor(model, label=mv.model, max_rows=self._batch_rows, max_wait_ms=self._batch_wait_ms),
            # The stored weights are the compact form; in memory an index or buffers come beside them.
            nbytes=2 * len(mv.weights),
        )

    def _used_bytes(self) -> int:
        return sum(m.nbytes for m in list(self._models.values()))

    def _evict_over_budget(self, *, keep: str) -> list[LoadedModel]:
        """Least recently used first, never `keep` (caller holds the lock). Evicted models keep their
        vocabulary in the BSSID index and are reloaded on demand."""
        evicted = []
        used = self._used_bytes()
        for sid in list(self._models):
            if used <= self._max_bytes:
                break
            if sid == keep:
                continue
            m = self._models.pop(sid)
            used -= m.nbytes
            evicted.append(m)
            log.info("evicted %s v%d of site %s from the model cache (budget)", m.name, m.version, sid)
        return evicted

    def _drop(self, site_id: str) -> None:
        """The site has no active model any more (or is gone): forget it everywhere."""
        with self._lock:
            old = self._models.pop(site_id, None)
            self._set_vocab(site_id, frozenset())
        if old is not None:
            old.executor.close()

    def _set_vocab(self, site_id: str, vocab: frozenset[str]) -> None:
        """Incremental BSSID index update (caller holds the lock): only the BSSIDs that changed are touched."""
        before = self._vocab.get(site_id, frozenset())
        if vocab == before:
            return
        index = self.bssid_sites
        for b in before - vocab:
            rest = index.get(b, frozenset()) - {site_id}
            if rest:
                index[b] = rest
            else:
                index.pop(b, None)
        for b in vocab - before:
            index[b] = index.get(b, frozenset()) | {site_id}
        if vocab:
            self._vocab[site_id] = vocab
        else:
            self._vocab.pop(site_id, None)
