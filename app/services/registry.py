"""Model versions: publishing, activation, listing, and the per-process cache that serves them.

Activation is one transaction: the old active version becomes `retired`, the new
one `active`, and `sites.active_version` changes; a partial unique index keeps
at most one active version per site whatever the interleaving.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db import Database
from app.errors import NotFound
from app.models import ModelVersion, Site
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


class ModelCache:
    """Active models in memory, per process. The hot path is a dict lookup.

    Pick-up of activations made elsewhere: a notice (Redis pub/sub in full mode)
    drops the site's entry at once; a background poll of `sites.active_version`
    every `refresh_s` catches anything a notice missed.
    """

    def __init__(self, db: Database, *, device: str, refresh_s: float, notifier: LocalNotifier) -> None:
        self._db = db
        self._device = device
        self._refresh_s = refresh_s
        self._models: dict[str, LoadedModel] = {}
        self._active: dict[str, int | None] = {}  # last seen sites.active_version
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.bssid_sites: dict[str, frozenset[str]] = {}
        notifier.subscribe(self.invalidate)

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="siteloc-model-refresh", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def get(self, site_id: str) -> LoadedModel | None:
        m = self._models.get(site_id)
        if m is not None:
            return m
        return self._load(site_id)

    def site_known(self, site_id: str) -> bool:
        return site_id in self._active

    def sites_with_models(self) -> list[str]:
        return [sid for sid, v in self._active.items() if v is not None]

    def invalidate(self, site_id: str) -> None:
        """Drop the site's cached model and load its (new) active one at once."""
        with self._lock:
            self._models.pop(site_id, None)
            self._active.pop(site_id, None)
        try:
            if self._load(site_id) is None:
                self._reindex()
        except Exception:  # the poll retries
            log.exception("could not load the newly active model of site %s", site_id)
            self._reindex()

    def refresh(self) -> None:
        """Re-read which version is active where; drop entries that changed."""
        with self._db.session() as s:
            rows = s.execute(select(Site.id, Site.active_version)).all()
        seen: dict[str, int | None] = {sid: v for sid, v in rows}
        changed = False
        with self._lock:
            for sid in list(self._models):
                if seen.get(sid, -1) != self._models[sid].version:
                    self._models.pop(sid, None)
                    changed = True
            self._active = seen
        for sid, v in seen.items():  # keep every active model loaded: site detection needs all vocabularies
            if v is not None and sid not in self._models:
                try:
                    self._load(sid)
                except Exception:
                    log.exception("could not load the active model of site %s", sid)
        if changed:
            self._reindex()

    def _poll(self) -> None:
        while not self._stop.wait(self._refresh_s):
            try:
                self.refresh()
            except Exception:
                log.warning("model refresh failed; retrying", exc_info=True)

    def _site_lock(self, site_id: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault(site_id, threading.Lock())

    def _load(self, site_id: str) -> LoadedModel | None:
        with self._site_lock(site_id):
            m = self._models.get(site_id)
            if m is not None:
                return m
            with self._db.session() as s:
                site = s.get(Site, site_id)
                if site is None:
                    return None
                if site.active_version is None:
                    self._active[site_id] = None
                    return None
                mv = s.scalar(
                    select(ModelVersion).where(
                        ModelVersion.site_id == site_id, ModelVersion.version == site.active_version
                    )
                )
            if mv is None:
                return None
            t0 = time.perf_counter()
            model = loads(mv.weights, mv.config, device=self._device)
            loaded = LoadedModel(
                site_id=site_id,
                version=mv.version,
                name=mv.model,
                model=model,
                ap_index={b: i for i, b in enumerate(model.aps)},
                max_age_ms=model.max_age_ms(),
            )
            log.info(
                "loaded %s v%d for site %s in %.0f ms", mv.model, mv.version, site_id, 1000 * (time.perf_counter() - t0)
            )
            with self._lock:
                self._models[site_id] = loaded
                self._active[site_id] = mv.version
        self._reindex()
        return loaded

    def _reindex(self) -> None:
        index: dict[str, set[str]] = {}
        for sid, m in list(self._models.items()):
            for b in m.model.aps:
                index.setdefault(b, set()).add(sid)
        self.bssid_sites = {b: frozenset(v) for b, v in index.items()}
