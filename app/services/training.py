"""Finetune: the site's survey -> a trained, evaluated, stored model version."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import Conflict, Invalid, JobFailed, NotAvailable
from app.models import Job, Site, SurveyFingerprint, Window
from app.schemas.api import FinetuneIn
from app.security import Principal
from app.services.jobs import JobContext, ProgressReporter, create_job, finish_job
from app.services.registry import publish_version
from app.services.sites import get_site
from app.services.surveys import load_site_fingerprints, load_site_windows, load_training_rows, site_vocabulary
from app.services.transfer import fit_with_transfer, mtloc_imu_artifact, source_artifacts
from ml.data.features import FingerprintSet, build_set
from ml.data.splits import split_by_group, train_fraction_subset
from ml.evaluate import metrics as score
from ml.models import MODEL_NAMES, available_models, get_model_class, model_strategies, models_with_strategy
from ml.models.base import LocModel, QueryBatch
from ml.seed import seed_everything
from ml.serialize import dumps

log = logging.getLogger(__name__)


def request_finetune(s: Session, *, site: Site, body: FinetuneIn, principal: Principal | None = None) -> Job:
    """Validate a finetune request and create its job (the caller commits, then dispatches)."""
    if body.model not in MODEL_NAMES:
        raise NotAvailable(
            f"model {body.model!r} is not available in this build yet; available: {', '.join(available_models())}"
        )
    cls = get_model_class(body.model)
    _check_strategy(s, site, body, principal)
    try:
        cls.check_params({k: v for k, v in body.params.items() if k != "holdout_fraction"})
    except ValueError as exc:
        # The user's params, checked before any job exists (a 422, the documented contract): ml.errors.InvalidParams
        # is a ValueError, and the models' checks still raise plain ones.
        raise Invalid(f"params: {exc}") from None
    has_data = s.scalar(select(SurveyFingerprint.id).where(SurveyFingerprint.site_id == site.id).limit(1))
    if has_data is None:
        raise Conflict(f"site {site.id!r} has no survey fingerprints yet; POST /sites/{site.id}/surveys first")
    if cls.trains_on == "windows" and not _has_windows(s, site.id):
        raise Conflict(
            f"model {body.model!r} trains on sensor windows and site {site.id!r} has none; upload a survey whose "
            "fingerprints carry 'sensors', or an ilc2020 trace archive"
        )
    params = body.model_dump(mode="json")
    return create_job(s, kind="finetune", site_id=site.id, params=params)


def _check_strategy(s: Session, site: Site, body: FinetuneIn, principal: Principal | None) -> None:
    strategy = body.strategy or "scratch"
    if strategy == "scratch":
        if body.transfer_from:
            raise Invalid("transfer_from needs a transfer strategy ('encoder' or 'msta')")
        return
    if strategy not in model_strategies(body.model):
        models = ", ".join(models_with_strategy(strategy)) or "none in this build"
        raise NotAvailable(f"strategy {strategy!r} is not available for model {body.model!r}; models with it: {models}")
    if not body.transfer_from:
        raise Invalid(f"strategy {strategy!r} needs transfer_from: the source site ids")
    for source in body.transfer_from:
        if source == site.id:
            raise Invalid("a site cannot transfer from itself")
        if principal is not None:
            principal.require_site(source)
        get_site(s, site_id=source)
        if s.scalar(select(SurveyFingerprint.id).where(SurveyFingerprint.site_id == source).limit(1)) is None:
            raise Conflict(f"source site {source!r} has no survey fingerprints to transfer from")
        if get_model_class(body.model).trains_on == "windows" and not _has_windows(s, source):
            raise Conflict(f"source site {source!r} has no sensor windows to pretrain the IMU-LSTM on")


def _has_windows(s: Session, site_id: str) -> bool:
    return s.scalar(select(Window.id).where(Window.site_id == site_id).limit(1)) is not None


def split_holdout(fs: FingerprintSet, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole paths (or rows when the survey has no paths); none when too small to spare."""
    n = len(fs)
    if fraction <= 0 or n < 10:
        return np.arange(n), np.array([], dtype=np.int64)
    return split_by_group(fs.path, fraction, seed)


def run_finetune(ctx: JobContext, job: Job, progress: ProgressReporter) -> dict[str, Any]:
    body = FinetuneIn.model_validate(job.params)
    site_id = job.site_id
    assert site_id is not None
    cls = get_model_class(body.model)
    params = dict(body.params)
    holdout_fraction = float(params.pop("holdout_fraction", ctx.settings.holdout_fraction))
    if not 0 <= holdout_fraction < 1:
        raise JobFailed("params.holdout_fraction must be in [0, 1)")
    progress(0.0, "loading survey")
    with ctx.db.session() as s:
        fps = load_training_rows(s, site_id=site_id, cls=cls)
        vocab = site_vocabulary(s, site_id=site_id)
    if not fps:
        raise JobFailed(f"the site has no survey {'sensor windows' if cls.trains_on == 'windows' else 'fingerprints'}")
    seed_everything(body.seed)
    full = build_set(fps, aps=vocab)
    train_idx, hold_idx = split_holdout(full, holdout_fraction, body.seed)
    if body.train_fraction is not None and body.train_fraction < 1:
        sub = train_fraction_subset(full.path[train_idx], body.train_fraction, body.seed)
        train_idx = train_idx[sub]
    train = _drop_unheard_aps(full.subset(train_idx))
    if len(train) == 0:
        raise JobFailed("no training fingerprints left after the holdout/train_fraction split")
    holdout = full.subset(hold_idx)

    strategy = body.strategy or "scratch"
    transfer: dict[str, Any] | None = None
    t0 = time.perf_counter()
    if strategy != "scratch":  # request_finetune checked it is one of model_strategies(body.model)
        fit_transfer = _fit_mtloc_transfer if body.model == "mtloc" else _fit_transfer
        model, transfer = fit_transfer(ctx, job, body, train, params, progress)
    else:
        model = _fit(cls, train, params, body.seed, progress.span(0.05, 0.85), ctx.device)
    train_time = time.perf_counter() - t0
    metrics = _evaluate(model, holdout) if len(holdout) else None
    refit = cls.refit_with_holdout and transfer is None and len(holdout) > 0 and body.train_fraction in (None, 1.0)
    if refit:
        progress.span(0.85, 0.95)(0.0, "refitting on the whole survey")
        both = _drop_unheard_aps(full.subset(np.concatenate([train_idx, hold_idx])))
        model = _fit(cls, both, {**params, **_tuned(model)}, body.seed, progress.span(0.85, 0.95), ctx.device)
    progress(0.96, "storing the model")
    weights, config = dumps(model)
    hold_ids = [fps[i].extra["id"] for i in hold_idx]
    rows_kind = "window" if cls.trains_on == "windows" else "fingerprint"
    training = {
        "job_id": job.id,
        "seed": body.seed,
        "strategy": body.strategy or "scratch",
        "transfer_from": body.transfer_from,
        "train_fraction": body.train_fraction,
        "params": params,
        "n_fingerprints": len(full),
        "n_train": len(train_idx),
        "n_holdout": len(hold_idx),
        "refit_with_holdout": refit,
        f"holdout_{rows_kind}_ids": hold_ids,
        "trained_on": cls.trains_on,
        "n_aps": len(model.aps),
        "train_time_s": round(train_time, 3),
        "device": ctx.device,
    }
    if transfer is not None:
        training["transfer"] = transfer
    public_metrics = _public_metrics(metrics)
    with ctx.db.session() as s:
        mv = publish_version(
            s,
            site_id=site_id,
            model=body.model,
            weights=weights,
            config=config,
            metrics=public_metrics,
            training=training,
            source="finetune",
            job_id=job.id,
        )
        finish_job(
            s,
            job_id=job.id,
            model_version=mv.version,
            metrics=public_metrics,
            result={
                "status": mv.status,
                "n_train": training["n_train"],
                "n_holdout": training["n_holdout"],
                **({"transfer": _transfer_brief(transfer)} if transfer is not None else {}),
            },
            message=f"model version {mv.version} ({mv.status})",
        )
        version, status = mv.version, mv.status
    if status == "active":
        ctx.notifier.publish(site_id)
    log.info("finetune %s: site %s %s v%d %s", job.id, site_id, body.model, version, status)
    return {"version": version}


def _fit_transfer(
    ctx: JobContext,
    job: Job,
    body: FinetuneIn,
    train: FingerprintSet,
    params: dict[str, Any],
    progress: ProgressReporter,
) -> tuple[LocModel, dict[str, Any]]:
    """Source artifacts (reused or built), then the transfer fit with its scratch baseline beside it."""
    strategy = body.strategy or "scratch"

    def load_set(site_id: str) -> FingerprintSet:
        with ctx.db.session() as s:
            fps = load_site_fingerprints(s, site_id=site_id)
            vocab = site_vocabulary(s, site_id=site_id)
        return _drop_unheard_aps(build_set(fps, aps=vocab))

    artifacts, notes = source_artifacts(
        ctx.db,
        model=body.model,
        strategy=strategy,
        sources=list(body.transfer_from or []),
        params=params,
        seed=body.seed,
        device=ctx.device,
        job_id=job.id,
        progress=progress.span(0.05, 0.4),
        load_set=load_set,
    )
    model, report = fit_with_transfer(
        model=body.model,
        strategy=strategy,
        train=train,
        artifacts=artifacts,
        params=params,
        seed=body.seed,
        device=ctx.device,
        progress=progress.span(0.4, 0.9),
    )
    return model, {"artifacts": notes, "report": report}


def _fit_mtloc_transfer(
    ctx: JobContext,
    job: Job,
    body: FinetuneIn,
    train: FingerprintSet,
    params: dict[str, Any],
    progress: ProgressReporter,
) -> tuple[LocModel, dict[str, Any]]:
    """The IMU-LSTM pretrained on the source sites' windows (reused or built), then MTLoc with it frozen or
    trainable."""
    from ml.models.mtloc import MTLoc

    strategy = body.strategy or "scratch"

    def load_set(site_id: str) -> FingerprintSet:
        with ctx.db.session() as s:
            return build_set(load_site_windows(s, site_id=site_id), aps=[])

    artifact, note = mtloc_imu_artifact(
        ctx.db,
        sources=list(body.transfer_from or []),
        params=params,
        seed=body.seed,
        device=ctx.device,
        job_id=job.id,
        progress=progress.span(0.05, 0.4),
        load_set=load_set,
    )
    model = MTLoc.fit(
        train,
        params,
        seed=body.seed,
        progress=progress.span(0.4, 0.9),
        device=ctx.device,
        imu_source=artifact,
        strategy=strategy,
    )
    return model, {"artifacts": [note], "report": {"strategy": strategy, "sources": note["sites"]}}


def _transfer_brief(transfer: dict[str, Any]) -> dict[str, Any]:
    """What the job shows: which candidate was kept and both candidates' hold-out scores."""
    report = transfer.get("report") or {}
    keys = ("strategy", "chosen", "holdout_gain_pct", "sources")
    brief = {k: report.get(k) for k in keys if k in report}
    for name in ("scratch", report.get("strategy")):
        if isinstance(name, str) and isinstance(report.get(name), dict):
            brief[name] = {"holdout": report[name].get("holdout")}
    return brief


def _fit(
    cls: type[LocModel],
    train: FingerprintSet,
    params: dict[str, Any],
    seed: int,
    progress: ProgressReporter,
    device: str,
) -> LocModel:
    return cls.fit(train, params, seed=seed, progress=progress, device=device)


def _tuned(model: LocModel) -> dict[str, Any]:
    """The settings a model chose while tuning, so the refit does not tune again."""
    chosen = model.config().get("params")
    if not isinstance(chosen, dict):
        return {}
    out = dict(chosen)
    if "tune" in out:
        out["tune"] = False
    return out


def _evaluate(model: LocModel, holdout: FingerprintSet) -> dict[str, Any]:
    pred = model.predict(QueryBatch.from_set(holdout.with_aps(model.aps)))
    return score(pred, holdout)


def _public_metrics(m: dict[str, Any] | None) -> dict[str, Any]:
    keys = ("mean_m", "median_m", "p75_m", "p95_m", "floor_hit", "building_hit", "n", "error_estimate_spearman")
    if m is None:
        return {
            "mean_m": None,
            "median_m": None,
            "p95_m": None,
            "floor_hit": None,
            "n": 0,
            "note": "no holdout: the survey was too small to hold paths out",
        }
    return {k: (None if isinstance(m.get(k), float) and not np.isfinite(m[k]) else m.get(k)) for k in keys if k in m}


def _drop_unheard_aps(fs: FingerprintSet) -> FingerprintSet:
    """Keep the vocabulary order but only APs heard at least once in these rows."""
    heard = ~np.all(np.isnan(fs.rss), axis=0)
    if heard.all():
        return fs
    return fs.with_aps([b for b, h in zip(fs.aps, heard, strict=True) if h])
