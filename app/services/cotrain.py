"""Self-maintenance updates (`POST /sites/{id}/cotrain` and the scheduler): a site's stored /locate queries -> a
candidate model version, promoted only if it is not worse than the active version on the survey holdout nor on
recent traffic (`ml.selfupdate` has the method: pseudo-labels from smoothed session walks, AP churn, the guard).

The survey (labeled) and the queries (unlabeled) never mix: queries carry no labels, pseudo-labels live only in
the candidate, and the queries an update looked at are marked with its job, so each is used once (the walks
held out to judge it stay unused, for the next update). A walk is one tracking session's queries: sessions are
keyed by the API key that opened them and the client's session id, and so are the stored walks (`queries.key_id`).

One update per site at a time: at most one queued or running cotrain job per site, enforced by the database (a
partial unique index, so concurrent requests, API processes and the scheduler cannot both create one), and a lease
on the site row, renewed while the job runs, which a crashed worker's job stops renewing (so it expires and frees
the site).
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import Database
from app.errors import Conflict, Invalid, JobFailed, NotAvailable
from app.models import Job, ModelVersion, Query, Site
from app.schemas.common import MAX_WINDOW_S
from app.services.codec import unpack_sensors, wifi_from_db
from app.services.jobs import JobContext, ProgressReporter, create_job_unless_pending, finish_job
from app.services.plans import site_walkables
from app.services.registry import activate, publish_version
from app.services.surveys import load_training_rows
from ml.cotrain import CotrainConfig, holdout_guard
from ml.data.features import build_set
from ml.errors import InvalidParams
from ml.finetune import evaluate
from ml.models import MODEL_NAMES, get_model_class
from ml.params import check_types
from ml.selfupdate import (
    Coverage,
    UpdateConfig,
    Walk,
    learn,
    split_walks,
    traffic_guard,
    traffic_scores,
)
from ml.serialize import dumps, loads
from ml.types import Fingerprint

log = logging.getLogger(__name__)

MAX_WINDOW_MS = MAX_WINDOW_S * 1000  # the longest sensor window a query may carry


def _active_version(s: Session, site_id: str) -> ModelVersion | None:
    return s.scalar(select(ModelVersion).where(ModelVersion.site_id == site_id, ModelVersion.status == "active"))


def unused_queries(s: Session, *, site_id: str) -> int:
    """How many of the site's stored queries no update has used yet."""
    return int(
        s.scalar(select(func.count()).select_from(Query).where(Query.site_id == site_id, Query.used_by_job.is_(None)))
        or 0
    )


def _pending_job(s: Session, site_id: str) -> str | None:
    return s.scalar(
        select(Job.id).where(Job.site_id == site_id, Job.kind == "cotrain", Job.state.in_(("queued", "running")))
    )


def unused_session_minutes(s: Session, *, site_id: str) -> float:
    """Minutes of walking in the site's tracking sessions stored since the last update: per session (the key that
    sent it and its session id: two apps may use the same id), last minus first timestamp of its unused queries,
    but at most 10 s per query (a query's sensor window covers at most 10 s), so a session id reused days apart
    does not count the days between."""
    rows = s.execute(
        select(func.min(Query.client_timestamp), func.max(Query.client_timestamp), func.count())
        .where(Query.site_id == site_id, Query.used_by_job.is_(None), Query.session_id.is_not(None))
        .group_by(Query.key_id, Query.session_id)
    ).all()
    return sum(min(max(0, (hi or 0) - (lo or 0)), n * MAX_WINDOW_MS) for lo, hi, n in rows) / 60000.0


def _unused_session_queries(s: Session, site_id: str) -> int:
    return int(
        s.scalar(
            select(func.count())
            .select_from(Query)
            .where(Query.site_id == site_id, Query.used_by_job.is_(None), Query.session_id.is_not(None))
        )
        or 0
    )


def check_update_params(model: str, params: dict[str, Any]) -> tuple[UpdateConfig, dict[str, Any]]:
    """(the update's own settings, the model's co-training ones (itoloc)), both checked: before any job exists,
    and again when it runs (the active model may have changed). The model's params come back as their settings
    declare them (an integral float such as 10.0 for an int setting becomes 10)."""
    try:
        cfg, rest = UpdateConfig.split_params(params)
        if get_model_class(model).supports_cotrain:
            CotrainConfig.from_params(rest)
            rest = check_types(CotrainConfig, rest, "co-training")
        elif rest:
            raise InvalidParams(
                f"unknown update params for a {model} site: {sorted(rest)}; known: {sorted(UpdateConfig.names())}"
            )
    except (ValueError, TypeError) as exc:
        # ml.errors.InvalidParams is a ValueError (ml.cotrain still raises plain ones), and a value of the wrong
        # type ({"sigma": "x"}) fails its comparison with TypeError.
        raise Invalid(f"params: {exc}") from None
    return cfg, rest


def request_cotrain(s: Session, *, site: Site, params: dict[str, Any]) -> Job:
    """Validate and create an update job (the caller commits, then dispatches)."""
    active = _active_version(s, site.id)
    if active is None:
        raise Conflict(f"site {site.id!r} has no active model to update; finetune one first")
    if active.model not in MODEL_NAMES:
        raise NotAvailable(f"site {site.id!r}'s active model {active.model} cannot be updated by this server")
    given = dict(params.get("params") or {})
    cfg, rest = check_update_params(active.model, given)
    # The job stores (and runs on) the checked values: {"particles": 10.0} is accepted as 10 and stored as 10.
    params = {**params, "params": {k: rest[k] if k in rest else getattr(cfg, k) for k in given}}
    if unused_queries(s, site_id=site.id) == 0:
        raise Conflict(f"site {site.id!r} has no stored queries not yet used by an update; nothing to learn from")
    learns_from_singles = cfg.single_query_labels == "self" or (
        cfg.single_query_labels == "auto" and get_model_class(active.model).supports_cotrain
    )
    if not learns_from_singles and _unused_session_queries(s, site.id) == 0:
        raise Conflict(
            f"site {site.id!r}'s active model is {active.model}: its updates learn from tracking sessions "
            "(/locate queries with a session_id), and none were stored since the last update. Send session "
            'queries, or set params {"single_query_labels": "self"} to learn from single queries\' own answers'
        )
    site_id = site.id
    pending = _pending_job(s, site_id)
    if pending is None:
        # The check above is for the message; the database decides (uq_jobs_one_pending_cotrain): a concurrent
        # request (another thread or API process) may have created one since.
        job = create_job_unless_pending(s, kind="cotrain", site_id=site_id, params=params)
        if job is not None:
            return job
        pending = _pending_job(s, site_id)
    raise Conflict(f"an update of site {site_id!r} is already queued or running (job {pending})")


def schedule_due_updates(s: Session, *, settings: Settings) -> list[str]:
    """Jobs for every site whose unused tracking sessions add up to >= cotrain_min_session_minutes of walking,
    or (models that learn from single queries: itoloc) that has >= cotrain_min_new_queries unused queries.

    The caller commits, then enqueues the returned job ids."""
    created = []
    rows = s.execute(select(ModelVersion.site_id, ModelVersion.model).where(ModelVersion.status == "active")).all()
    for site_id, model in rows:
        if model not in MODEL_NAMES or _pending_job(s, site_id):
            continue
        due = unused_session_minutes(s, site_id=site_id) >= settings.cotrain_min_session_minutes
        if not due and get_model_class(model).supports_cotrain:
            due = unused_queries(s, site_id=site_id) >= settings.cotrain_min_new_queries
        if due:
            job = create_job_unless_pending(s, kind="cotrain", site_id=site_id, params={"scheduled": True})
            if job is not None:  # else a request (or another scheduler) created one meanwhile
                created.append(job.id)
    return created


# -- the job ---------------------------------------------------------------------------------------


class _Lease:
    def __init__(self, db: Database, site_id: str, job_id: str, seconds: float) -> None:
        self.db, self.site_id, self.job_id, self.seconds = db, site_id, job_id, seconds

    def acquire(self) -> None:
        now = datetime.now(UTC)
        with self.db.session() as s:
            got = s.execute(  # type: ignore[attr-defined]
                update(Site)
                .where(
                    Site.id == self.site_id,
                    or_(Site.lock_until.is_(None), Site.lock_until < now, Site.lock_job == self.job_id),
                )
                .values(lock_job=self.job_id, lock_until=now + timedelta(seconds=self.seconds))
            ).rowcount
            holder = None if got else s.scalar(select(Site.lock_job).where(Site.id == self.site_id))
        if not got:
            raise JobFailed(f"another update of this site is running (job {holder}); try again after it finishes")

    def renew(self) -> None:
        with self.db.session() as s:
            s.execute(
                update(Site)
                .where(Site.id == self.site_id, Site.lock_job == self.job_id)
                .values(lock_until=datetime.now(UTC) + timedelta(seconds=self.seconds))
            )

    def release(self) -> None:
        with self.db.session() as s:
            s.execute(
                update(Site)
                .where(Site.id == self.site_id, Site.lock_job == self.job_id)
                .values(lock_job=None, lock_until=None)
            )


def run_cotrain(ctx: JobContext, job: Job, progress: ProgressReporter) -> dict[str, Any]:
    site_id = job.site_id
    assert site_id is not None
    lease = _Lease(ctx.db, site_id, job.id, ctx.settings.cotrain_lock_seconds)
    lease.acquire()
    progress.on_write = lease.renew
    try:
        return _update(ctx, job, progress)
    finally:
        lease.release()


def _update(ctx: JobContext, job: Job, progress: ProgressReporter) -> dict[str, Any]:
    site_id = job.site_id
    assert site_id is not None
    guard = bool(job.params.get("guard", True))
    seed = int(job.params.get("seed", 0))
    progress(0.0, "loading the active model, survey, plans and queries")
    with ctx.db.session() as s:
        active = _active_version(s, site_id)
        if active is None:
            raise JobFailed("the site has no active model any more")
        parent, model_name = active.version, active.model
        cfg, model_params = check_update_params(model_name, dict(job.params.get("params") or {}))
        model = loads(active.weights, active.config, device=ctx.device)
        cls = get_model_class(model_name)
        kind = "window" if cls.trains_on == "windows" else "fingerprint"
        active_training = dict(active.training or {})
        holdout_ids = set(active_training.get(f"holdout_{kind}_ids") or [])
        saw_holdout = bool(active_training.get("refit_with_holdout"))
        active_metrics = active.metrics
        survey = load_training_rows(s, site_id=site_id, cls=cls)
        plans = site_walkables(s, site_id=site_id)
        pool = _load_queries(s, site_id, ctx.settings.cotrain_max_queries, ctx.settings.session_ttl_s)
    if not pool.ids:
        raise JobFailed("no unused queries to learn from")
    hold_idx = np.array([i for i, fp in enumerate(survey) if fp.extra.get("id") in holdout_ids], dtype=np.int64)
    holdout = build_set([survey[i] for i in hold_idx], aps=model.aps)

    progress(0.05, f"tracking {len(pool.walks)} stored walks")
    learn_walks, guard_walks = split_walks(pool.walks, cfg)
    held = {i for w in guard_walks for i in w.ids}  # left unused: the next update learns from them
    used_ids = [i for i in pool.ids if i not in held]
    counts = {
        "n_queries": len(pool.ids),
        "n_sessions": len(pool.walks),
        "n_sessions_learned": len(learn_walks),
        "n_sessions_guard": len(guard_walks),
        "session_minutes": round(sum(w.minutes for w in learn_walks), 2),
        "n_single_queries": len(pool.singles),
    }
    coverage = Coverage.fit(survey, hold_idx, cfg)  # which scans look like the survey's
    cand = learn(
        model,
        learn_walks,
        pool.singles,
        survey,
        hold_idx,
        plans,
        cfg,
        model_params,
        seed=seed,
        progress=progress.span(0.1, 0.85),
        device=ctx.device,
        coverage=coverage,
    )
    if cand is None:
        return _nothing_to_learn(ctx, job, used_ids, counts, cfg)
    counts["n_pseudo_labels"] = int(cand.summary["n_pseudo_labels"])
    counts["n_vanished_aps"] = len(cand.summary["vanished_aps"])
    progress(0.9, "judging the update on the survey holdout and on recent walks")
    before = active_metrics if saw_holdout else evaluate(model, holdout)
    after = evaluate(cand.scored, holdout)
    traffic_before, traffic_after = traffic_scores(model, cand.served, guard_walks, plans, cfg, coverage)
    promote, reason = _judge(
        before,
        after,
        traffic_before,
        traffic_after,
        (ctx.settings.cotrain_tolerance, ctx.settings.cotrain_traffic_tolerance),
        guard,
        cfg.guard_min_scans,
    )
    weights, config = dumps(cand.served)
    training = {
        "job_id": job.id,
        "seed": seed,
        "params": dict(job.params.get("params") or {}),
        "update": asdict(cfg),
        "guard": guard,
        "tolerance": ctx.settings.cotrain_tolerance,
        "traffic_tolerance": ctx.settings.cotrain_traffic_tolerance,
        **counts,
        "n_labeled": len(survey) - len(hold_idx),
        "n_holdout": len(hold_idx),
        f"holdout_{kind}_ids": sorted(holdout_ids),
        "refit_with_holdout": cand.served is not cand.scored,
        "trained_on": cls.trains_on,
        "vanished_aps": cand.summary["vanished_aps"],
        "holdout_before": before,
        "holdout_after": after,
        "traffic_before": traffic_before,
        "traffic_after": traffic_after,
        "decision": reason,
        "summary": cand.summary,
    }
    with ctx.db.session() as s:
        mv = publish_version(
            s,
            site_id=site_id,
            model=model_name,
            weights=weights,
            config=config,
            metrics=after,
            training=training,
            source="cotrain",
            job_id=job.id,
            parent_version=parent,
            activate_if_first=False,
        )
        if promote:
            activate(s, site_id=site_id, version=mv.version, reason=reason)
        else:
            mv.status, mv.status_reason = "rejected", reason
        _mark_used(s, used_ids, job.id)
        result = {
            "status": mv.status,
            "reason": reason,
            **counts,
            "holdout_before": before,
            "holdout_after": after,
            "traffic_before": traffic_before,
            "traffic_after": traffic_after,
            "summary": cand.summary,
        }
        finish_job(
            s,
            job_id=job.id,
            model_version=mv.version,
            metrics=after,
            result=result,
            message=f"model version {mv.version} ({mv.status}): {reason}",
        )
        version = mv.version
    if promote:
        ctx.notifier.publish(site_id)
    log.info("cotrain %s: site %s v%d %s (%s)", job.id, site_id, version, "promoted" if promote else "rejected", reason)
    return {"version": version}


def _nothing_to_learn(
    ctx: JobContext, job: Job, used_ids: list[str], counts: dict[str, Any], cfg: UpdateConfig
) -> dict[str, Any]:
    """No pseudo-label passed, no single query to co-train on, no AP vanished: no version; the queries looked at
    are marked used (so the scheduler does not retry them forever), the job says why."""
    singles = "" if cfg.single_query_labels == "off" else f", none of {counts['n_single_queries']} single queries"
    reason = (
        f"no update: nothing to learn from ({counts['n_sessions_learned']} walks gave no pseudo-label with a track "
        f"uncertainty within max_label_error_m = {cfg.max_label_error_m:g} m{singles} passed the model's "
        "single-query test, and no access point vanished)"
    )
    with ctx.db.session() as s:
        _mark_used(s, used_ids, job.id)
        finish_job(
            s,
            job_id=job.id,
            model_version=None,
            metrics=None,
            result={"status": "skipped", "reason": reason, **counts},
            message=reason,
        )
    return {"version": None}


def _mark_used(s: Session, ids: list[str], job_id: str) -> None:
    for chunk in range(0, len(ids), 1000):
        s.execute(update(Query).where(Query.id.in_(ids[chunk : chunk + 1000])).values(used_by_job=job_id))


@dataclass
class _Pool:
    ids: list[str]
    walks: list[Walk]
    singles: list[Fingerprint]
    single_ids: list[str]


def _load_queries(s: Session, site_id: str, limit: int, gap_s: float) -> _Pool:
    """The newest `limit` unused queries: session queries grouped into walks (one per session: the key that sent
    it and its session id, as `/locate` keys live sessions; in timestamp order, cut where the session fell silent
    for longer than the session TTL, i.e. expired and was reopened), and the single queries. Rows stored before
    the query log recorded the key (no key_id) group by session id alone."""
    rows = s.execute(
        select(
            Query.id,
            Query.wifi,
            Query.sensors,
            Query.device,
            Query.client_timestamp,
            Query.created_at,
            Query.session_id,
            Query.floor,
            Query.key_id,
        )
        .where(Query.site_id == site_id, Query.used_by_job.is_(None))
        .order_by(Query.id.desc())
        .limit(limit)
    ).all()
    by_session: dict[tuple[str | None, str], list[tuple[int, str, Fingerprint]]] = defaultdict(list)
    singles, single_ids = [], []
    for qid, w, sens, d, t, c, sid, floor, key_id in reversed(rows):
        ts = t if t is not None else int(c.timestamp() * 1000)
        fp = Fingerprint(
            wifi=wifi_from_db(w),
            x=float("nan"),
            y=float("nan"),
            floor="",
            device=d,
            timestamp=ts,
            sensors=unpack_sensors(sens) if sens is not None and sid is not None else None,
            extra={"answered_floor": floor},
        )
        if sid is None:
            singles.append(fp)
            single_ids.append(qid)
        else:
            by_session[(key_id, sid)].append((ts, qid, fp))
    keys_per_id = Counter(sid for _, sid in by_session)
    walks = []
    for (key_id, sid), items in by_session.items():
        # The walk's name (it seeds the replay's filter and names its pseudo-labels' path): the session id, and
        # the key's id too where another key used the same session id (so walks of one key keep their old names,
        # and a replay its old seed).
        name = sid if keys_per_id[sid] == 1 else f"{sid}@{key_id or '-'}"
        items.sort(key=lambda r: (r[0], r[1]))
        part = 0
        cur: list[tuple[int, str, Fingerprint]] = []
        for item in items:
            if cur and item[0] - cur[-1][0] > gap_s * 1000:
                walks.append(_walk(f"{name}#{part}", cur))
                part, cur = part + 1, []
            cur.append(item)
        if cur:
            walks.append(_walk(f"{name}#{part}" if part else name, cur))
    return _Pool([r[0] for r in rows], walks, singles, single_ids)


def _walk(key: str, items: list[tuple[int, str, Fingerprint]]) -> Walk:
    return Walk(key, [fp for _, _, fp in items], [qid for _, qid, _ in items])


def _judge(
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
    traffic_before: dict[str, Any] | None,
    traffic_after: dict[str, Any] | None,
    tol: tuple[float, float],
    guard: bool,
    min_scans: int,
) -> tuple[bool, str]:
    """(promote, reason): the survey holdout within tol[0], the held-out walks' score (over at least `min_scans`
    scans) within tol[1]."""
    if not guard:
        return True, "promoted without the guard (guard disabled for this job)"
    if before is None or after is None:
        return False, "rejected: the active version has no labeled holdout to judge an update on"
    ok, reason = holdout_guard(before, after, tol[0])
    if not ok:
        return False, reason
    ok_t, reason_t = traffic_guard(traffic_before, traffic_after, tol[1], tol[0], min_scans)
    if not ok_t:
        return False, reason_t
    return True, f"{reason}; {reason_t}"
