"""/locate: scan -> site -> active model -> answer, stored in the query log before it is returned."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np

from app.config import Settings
from app.errors import Conflict, Invalid, NotFound, Unavailable
from app.schemas.api import LocateIn
from app.security import Principal
from app.services.codec import pack_sensors, sensors_from_api
from app.services.ids import time_ordered_id
from app.services.plans import PlanCache
from app.services.querylog import QueryWriter
from app.services.registry import LoadedModel, ModelCache
from app.services.sessions import SessionHook
from app.services.storable import check_query_rows
from ml.detect import detect_site, score_sites
from ml.models.base import Prediction, QueryBatch
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
        self,
        *,
        settings: Settings,
        models: ModelCache,
        writer: QueryWriter,
        sessions: SessionHook | None = None,
        plans: PlanCache | None = None,
    ) -> None:
        self._settings = settings
        self._models = models
        self._writer = writer
        self._sessions = sessions
        self._plans = plans  # the floor plans `sessions` reads, refreshed here off the event loop

    async def locate(self, queries: list[LocateIn], principal: Principal) -> list[dict[str, Any]]:
        """Answer every query, or none: any bad query fails the whole request before anything is stored.

        Answers are plain dicts in the shape of `LocateOut` (the hot path skips a second validation).
        The event loop only featurises and shapes answers: models are loaded in a worker thread and
        `predict` runs on each model's batching executor (`inference.py`), shared with concurrent requests."""
        many = len(queries) > 1
        queries = list(queries)  # a motion-only session query may take its site from an earlier one (below)
        prepared = []
        session_sites: dict[str, str] = {}  # a session opened earlier in this request: its site
        for i, q in enumerate(queries):
            where = f"queries[{i}]: " if many else ""
            self._check(q, where)
            if q.session_id is not None and q.site_id is None and not q.wifi and q.session_id in session_sites:
                q = queries[i] = q.model_copy(update={"site_id": session_sites[q.session_id]})
            lm = self._cached_model(q, principal, where)
            if lm is None:  # a cold site, or detection that needs a load or a tie-break: off the loop
                lm = await asyncio.to_thread(self._model_for, q, principal, where)
            prepared.append(self._prepare(q, lm, where))
            if q.session_id is not None:
                session_sites.setdefault(q.session_id, lm.site_id)
        # Tracking sessions: checked before anything is answered, applied after the model's answers.
        tracked = self._sessions is not None and any(q.session_id is not None for q in queries)
        if tracked:
            assert self._sessions is not None
            self._sessions.check(queries, [p.model.site_id for p in prepared], principal.key_id)
        preds = await self._infer(prepared)
        outs, rows = self._answers(prepared, preds, principal.key_id)
        pending = None
        if tracked:  # in memory first: a request that fails below leaves its sessions as they were
            assert self._sessions is not None
            await self._refresh_plans(prepared)
            pending = await asyncio.to_thread(
                self._sessions.advance,
                queries,
                [p.neighbours for p in prepared],
                [p.sensors for p in prepared],
                outs,
                rows,
                principal.key_id,
            )
        check_query_rows(rows)  # issue 19: nothing answered is unstorable (a bad row would fail its whole commit)
        if pending:
            assert self._sessions is not None
            await asyncio.to_thread(self._sessions.commit, pending, queries, outs, rows)
        try:
            await self._writer.write(rows)
        except Exception as exc:
            raise Unavailable("the query could not be stored, so no answer is given; retry shortly") from exc
        return outs

    # -- steps -----------------------------------------------------------------------------------

    async def _refresh_plans(self, prepared: list[_Prepared]) -> None:
        """The session sites' floor plans in memory before the session hook reads them on the event loop: a
        database read and the rasterising of a changed plan happen here, in a worker thread."""
        if self._plans is None:
            return
        for site_id in {p.model.site_id for p in prepared if p.query.session_id is not None}:
            if self._plans.due(site_id):
                await asyncio.to_thread(self._plans.refresh, site_id)

    def _check(self, q: LocateIn, where: str) -> None:
        if len(q.wifi) > self._settings.max_aps_per_scan:
            raise Invalid(
                f"{where}the scan lists {len(q.wifi)} access points; the limit is {self._settings.max_aps_per_scan}"
            )
        if not q.wifi and q.sensors is None:
            raise Invalid(f"{where}the query has neither a WiFi scan ('wifi') nor a sensor window ('sensors')")

    def _prepare(self, q: LocateIn, lm: LoadedModel, where: str) -> _Prepared:
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

    def _cached_model(self, q: LocateIn, principal: Principal, where: str) -> LoadedModel | None:
        """The model from memory alone (no database, no load, no distance computation), or None."""
        if q.site_id is None and q.session_id is not None and not q.wifi:
            return None  # a motion-only session query: its site comes from the session (slow path)
        if q.site_id is None:
            candidates = self._candidates(q, principal, load=False)
            if candidates is None:
                return None
            scores = score_sites((e.bssid for e in q.wifi), {sid: lm.ap_index for sid, lm in candidates.items()})
            if not scores or scores[0].known < 1:
                return None  # the slow path raises the 422 with the same rules
            if len(scores) > 1 and scores[1].known == scores[0].known:
                return None  # a tie: the nearest-fingerprint distances decide, off the loop
            return candidates[scores[0].site]
        principal.require_site(q.site_id)
        lm = self._models.peek(q.site_id)
        if lm is None and self._models.known_missing(q.site_id):
            self._raise_missing(q.site_id, where)
        return lm

    def _model_for(self, q: LocateIn, principal: Principal, where: str) -> LoadedModel:
        """Blocking: may read the database and load a model."""
        site_id = q.site_id
        if site_id is None and q.session_id is not None and not q.wifi and self._sessions is not None:
            site_id = self._sessions.site_for_motion_only(q, principal.key_id, where)
        if site_id is None:
            return self._detect(q, principal, where)
        principal.require_site(site_id)
        lm = self._models.get(site_id)
        if lm is None:
            self._raise_missing(site_id, where)
        return lm

    def _raise_missing(self, site_id: str, where: str) -> NoReturn:
        if self._models.site_known(site_id):
            raise Conflict(
                f"{where}site {site_id!r} has no active model yet; POST /sites/{site_id}/finetune and wait for the job"
            )
        raise NotFound(f"{where}site {site_id!r} not found")

    def _candidates(self, q: LocateIn, principal: Principal, *, load: bool) -> dict[str, LoadedModel] | None:
        """Sites (this key may use) knowing any AP of the scan, with their models; None when one is not
        cached and `load` is False."""
        index = self._models.bssid_sites
        candidates: dict[str, LoadedModel] = {}
        for e in q.wifi:
            for sid in index.get(e.bssid, ()):
                if sid not in candidates and principal.may_see_site(sid):
                    lm = self._models.get(sid) if load else self._models.peek(sid)
                    if lm is not None:
                        candidates[sid] = lm
                    elif not load:
                        return None
        return candidates

    def _detect(self, q: LocateIn, principal: Principal, where: str) -> LoadedModel:
        """The site whose active model knows most of the scan's access points (ties: the nearest fingerprint)."""
        candidates = self._candidates(q, principal, load=True) or {}

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

    async def _infer(self, prepared: list[_Prepared]) -> list[tuple[Prediction, int]]:
        """(prediction, row in it) per query: one executor submission per model in the request."""
        by_model: dict[int, list[int]] = {}
        for i, p in enumerate(prepared):
            by_model.setdefault(id(p.model), []).append(i)
        futures = []
        for idxs in by_model.values():
            batch = QueryBatch(
                rss=np.stack([prepared[i].rss for i in idxs]),
                age_ms=np.stack([prepared[i].age for i in idxs]),
                sensors=[prepared[i].sensors for i in idxs],
                device=[prepared[i].query.device for i in idxs],
            )
            futures.append(prepared[idxs[0]].model.executor.predict(batch))
        preds = [await futures[0]] if len(futures) == 1 else await asyncio.gather(*futures)
        out: list[tuple[Prediction, int] | None] = [None] * len(prepared)
        for idxs, pred in zip(by_model.values(), preds, strict=True):
            for k, i in enumerate(idxs):
                out[i] = (pred, k)
        return [o for o in out if o is not None]

    @staticmethod
    def _answers(
        prepared: list[_Prepared], preds: list[tuple[Prediction, int]], key_id: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(answers, their query-log rows); a row records the key that sent the query (`key_id`): a tracking
        session is the key's, so self-maintenance groups a session's stored queries by (key_id, session_id)."""
        outs: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        for p, (pred, k) in zip(prepared, preds, strict=True):
            lm = p.model
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
            rows.append(
                {
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
                    "key_id": key_id,
                }
            )
            if out["building"] is None:
                del out["building"]
            outs.append(out)
        return outs, rows
