"""/locate: scan -> site -> active model -> answer, stored in the query log before it is returned."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.config import Settings
from app.errors import Conflict, Invalid, NotFound, Unavailable
from app.schemas.api import LocateIn
from app.security import Principal
from app.services.codec import pack_sensors, sensors_from_api
from app.services.ids import time_ordered_id
from app.services.querylog import QueryWriter
from app.services.registry import LoadedModel, ModelCache
from app.services.sessions import SessionHook
from ml.detect import detect_site
from ml.models.base import QueryBatch
from ml.types import SensorData


@dataclass
class _Prepared:
    model: LoadedModel
    rss: np.ndarray
    age: np.ndarray
    sensors: SensorData | None
    query: LocateIn
    neighbours: tuple[np.ndarray, np.ndarray] | None = None  # the model's survey points behind the answer


class Locator:
    def __init__(
        self, *, settings: Settings, models: ModelCache, writer: QueryWriter, sessions: SessionHook | None = None
    ) -> None:
        self._settings = settings
        self._models = models
        self._writer = writer
        self._sessions = sessions

    async def locate(self, queries: list[LocateIn], principal: Principal) -> list[dict[str, Any]]:
        """Answer every query, or none: any bad query fails the whole request before anything is stored.

        Answers are plain dicts in the shape of `LocateOut` (the hot path skips a second validation)."""
        many = len(queries) > 1
        prepared = [self._prepare(q, principal, f"queries[{i}]: " if many else "") for i, q in enumerate(queries)]
        # Tracking sessions: checked before anything is answered, applied after the model's answers.
        tracked = self._sessions is not None and any(q.session_id is not None for q in queries)
        if tracked:
            assert self._sessions is not None
            self._sessions.check(queries, [p.model.site_id for p in prepared], principal.key_id)
        outs, rows = self._predict(prepared)
        if tracked:
            assert self._sessions is not None
            self._sessions.apply(
                queries, [p.neighbours for p in prepared], [p.sensors for p in prepared], outs, rows, principal.key_id
            )
        try:
            await asyncio.wrap_future(self._writer.submit(rows))
        except Exception as exc:
            raise Unavailable("the query could not be stored, so no answer is given; retry shortly") from exc
        return outs

    # -- steps -----------------------------------------------------------------------------------

    def _prepare(self, q: LocateIn, principal: Principal, where: str) -> _Prepared:
        if len(q.wifi) > self._settings.max_aps_per_scan:
            raise Invalid(
                f"{where}the scan lists {len(q.wifi)} access points; the limit is {self._settings.max_aps_per_scan}"
            )
        if not q.wifi and q.sensors is None:
            raise Invalid(f"{where}the query has neither a WiFi scan ('wifi') nor a sensor window ('sensors')")
        lm = self._model_for(q, principal, where)
        rss, age, known = self._row(q, lm)
        sensors = sensors_from_api(q.sensors.model_dump()) if q.sensors else None
        motion_only = q.session_id is not None and not q.wifi  # answered by the session from motion alone
        if known == 0 and not motion_only and not (sensors is not None and lm.model.trains_on == "windows"):
            if not q.wifi:
                raise Invalid(f"{where}site {lm.site_id!r}'s active model ({lm.name}) needs a WiFi scan")
            raise Invalid(
                f"{where}none of the {len(q.wifi)} access points in the scan is known at site "
                f"{lm.site_id!r} (model {lm.name} v{lm.version}); cannot locate"
            )
        return _Prepared(model=lm, rss=rss, age=age, sensors=sensors, query=q)

    def _model_for(self, q: LocateIn, principal: Principal, where: str) -> LoadedModel:
        site_id = q.site_id
        if site_id is None and q.session_id is not None and not q.wifi and self._sessions is not None:
            site_id = self._sessions.site_for_motion_only(q, principal.key_id, where)
        if site_id is None:
            return self._detect(q, principal, where)
        principal.require_site(site_id)
        lm = self._models.get(site_id)
        if lm is None:
            if self._models.site_known(site_id):
                raise Conflict(
                    f"{where}site {site_id!r} has no active model yet; "
                    f"POST /sites/{site_id}/finetune and wait for the job"
                )
            raise NotFound(f"{where}site {site_id!r} not found")
        return lm

    def _detect(self, q: LocateIn, principal: Principal, where: str) -> LoadedModel:
        """The site whose active model knows most of the scan's access points (ties: the nearest fingerprint)."""
        index = self._models.bssid_sites
        candidates: dict[str, LoadedModel] = {}
        for e in q.wifi:
            for sid in index.get(e.bssid, ()):
                if sid not in candidates and principal.may_see_site(sid):
                    lm = self._models.get(sid)
                    if lm is not None:
                        candidates[sid] = lm

        def distance(sid: str) -> float:
            lm = candidates[sid]
            nearest = getattr(lm.model, "nearest_distance", None)
            if nearest is None:
                return 0.0
            rss, age, _ = self._row(q, lm)
            return float(nearest(QueryBatch(rss=rss[None], age_ms=age[None]))[0])

        best = detect_site((e.bssid for e in q.wifi), {sid: lm.ap_index for sid, lm in candidates.items()}, distance)
        if best is None:
            raise Invalid(
                f"{where}no site this key may use knows any access point of the scan; "
                "send 'site_id' or survey the site first"
            )
        return candidates[best.site]

    @staticmethod
    def _row(q: LocateIn, lm: LoadedModel) -> tuple[np.ndarray, np.ndarray, int]:
        m = len(lm.ap_index)
        rss = np.full(m, np.nan, dtype=np.float32)
        age = np.full(m, np.nan, dtype=np.float32)
        cutoff = lm.max_age_ms
        known = 0
        for e in q.wifi:
            j = lm.ap_index.get(e.bssid)
            if j is None or (cutoff is not None and e.age_ms is not None and e.age_ms > cutoff):
                continue
            if math.isnan(rss[j]):
                known += 1
            elif e.rssi <= rss[j]:
                continue
            rss[j] = e.rssi
            age[j] = math.nan if e.age_ms is None else e.age_ms
        return rss, age, known

    def _predict(self, prepared: list[_Prepared]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        by_model: dict[int, list[int]] = {}
        for i, p in enumerate(prepared):
            by_model.setdefault(id(p.model), []).append(i)
        outs: list[dict[str, Any] | None] = [None] * len(prepared)
        rows: list[dict[str, Any] | None] = [None] * len(prepared)
        for idxs in by_model.values():
            lm = prepared[idxs[0]].model
            batch = QueryBatch(
                rss=np.stack([prepared[i].rss for i in idxs]),
                age_ms=np.stack([prepared[i].age for i in idxs]),
                sensors=[prepared[i].sensors for i in idxs],
                device=[prepared[i].query.device for i in idxs],
            )
            pred = lm.model.predict(batch)
            for k, i in enumerate(idxs):
                p = prepared[i]
                if p.query.session_id is not None and pred.neighbours is not None:
                    p.neighbours = (pred.neighbours[0][k], pred.neighbours[1][k])
                qid = time_ordered_id()
                building = pred.building[k]
                out: dict[str, Any] = {
                    "site_id": lm.site_id,
                    "x": float(pred.xy[k, 0]),
                    "y": float(pred.xy[k, 1]),
                    "floor": str(pred.floor[k]),
                    "building": None if building is None else str(building),
                    "error_m": round(float(pred.error_m[k]), 3),
                    "model": {"name": lm.name, "version": lm.version},
                    "query_id": qid,
                }
                outs[i] = out
                rows[i] = {
                    "id": qid,
                    "site_id": lm.site_id,
                    "device": p.query.device,
                    "client_timestamp": p.query.timestamp,
                    "wifi": [[e.bssid, e.rssi, e.age_ms] for e in p.query.wifi],
                    "sensors": pack_sensors(p.sensors) if p.sensors is not None else None,
                    "x": out["x"],
                    "y": out["y"],
                    "floor": out["floor"],
                    "building": out["building"],
                    "error_m": out["error_m"],
                    "model_name": lm.name,
                    "model_version": lm.version,
                }
        answers = [o for o in outs if o is not None]
        for a in answers:
            if a["building"] is None:
                del a["building"]
        return answers, [r for r in rows if r is not None]
