"""Finetune: the site's survey -> a trained, evaluated, stored model version."""

from __future__ import annotations

import logging
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
from ml.finetune import FitFn, finetune, fit_model
from ml.models import MODEL_NAMES, available_models, get_model_class, model_strategies, models_with_strategy
from ml.models.base import LocModel, ProgressFn
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


def run_finetune(ctx: JobContext, job: Job, progress: ProgressReporter) -> dict[str, Any]:
    """The finetune pipeline (`ml.finetune`: split -> fit -> evaluate -> refit) on the site's survey, published
    as a new version. Its metrics are the scored model's on the holdout; what is served is that model refitted
    once on the whole survey (wknn, dnn, cnnloc and transfer fits) or the scored model itself (itoloc, mtloc)."""
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
    full = _drop_unheard_aps(build_set(fps, aps=vocab))
    strategy = body.strategy or "scratch"
    transfer: dict[str, Any] = {}
    if strategy != "scratch":  # request_finetune checked it is one of model_strategies(body.model)
        fit_transfer = _fit_mtloc_transfer if body.model == "mtloc" else _fit_transfer
        fit = fit_transfer(ctx, job, body, params, progress.span(0.02, 0.4), transfer)
        span = progress.span(0.4, 0.95)
    else:
        fit = _fit(cls, params, body.seed, ctx.device)
        span = progress.span(0.02, 0.95)
    done = finetune(
        full,
        fit,
        holdout_fraction=holdout_fraction,
        holdout_by=str(params.get("holdout_by", "auto")),
        seed=body.seed,
        train_fraction=body.train_fraction,
        progress=span,
        device=ctx.device,
    )
    if len(done.holdout.fit) == 0:
        raise JobFailed("no training fingerprints left after the holdout/train_fraction split")
    model = done.model
    progress(0.96, "storing the model")
    weights, config = dumps(model)
    hold_ids = [fps[i].extra["id"] for i in done.holdout.hold]
    rows_kind = "window" if cls.trains_on == "windows" else "fingerprint"
    training = {
        "job_id": job.id,
        "seed": body.seed,
        "strategy": strategy,
        "transfer_from": body.transfer_from,
        "train_fraction": body.train_fraction,
        "params": params,
        "n_fingerprints": len(full),
        "n_train": len(done.holdout.fit),
        "n_holdout": len(done.holdout.hold),
        "holdout_by": done.holdout.by,
        "refit_with_holdout": done.refitted,
        "fits": done.fits,
        f"holdout_{rows_kind}_ids": hold_ids,
        "trained_on": cls.trains_on,
        "n_aps": len(model.aps),
        "train_time_s": round(done.train_s, 3),
        "device": ctx.device,
    }
    if transfer:
        training["transfer"] = transfer
    public_metrics = _public_metrics(done.metrics)
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
                "fits": done.fits,
                "refit_with_holdout": done.refitted,
                **({"transfer": _transfer_brief(transfer)} if transfer else {}),
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
    params: dict[str, Any],
    progress: ProgressReporter,
    transfer: dict[str, Any],
) -> FitFn:
    """Source artifacts (reused or built) now; the fit trains the transfer candidate with its scratch baseline
    beside it and keeps the better on the holdout. `transfer` receives the artifact notes and the report."""
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
        progress=progress,
        load_set=load_set,
    )

    def fit(rows: FingerprintSet, holdout: np.ndarray, span: ProgressFn) -> LocModel:
        model, report = fit_with_transfer(
            model=body.model,
            strategy=strategy,
            train=rows,
            holdout=holdout,
            artifacts=artifacts,
            params=params,
            seed=body.seed,
            device=ctx.device,
            progress=span,
        )
        transfer.update({"artifacts": notes, "report": report})
        return model

    return fit


def _fit_mtloc_transfer(
    ctx: JobContext,
    job: Job,
    body: FinetuneIn,
    params: dict[str, Any],
    progress: ProgressReporter,
    transfer: dict[str, Any],
) -> FitFn:
    """The IMU-LSTM pretrained on the source sites' windows (reused or built) now; the fit trains MTLoc with it
    frozen or trainable."""
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
        progress=progress,
        load_set=load_set,
    )
    transfer.update({"artifacts": [note], "report": {"strategy": strategy, "sources": note["sites"]}})

    def fit(rows: FingerprintSet, holdout: np.ndarray, span: ProgressFn) -> LocModel:
        return MTLoc.fit(
            rows,
            params,
            holdout=holdout,
            seed=body.seed,
            progress=span,
            device=ctx.device,
            imu_source=artifact,
            strategy=strategy,
        )

    return fit


def _transfer_brief(transfer: dict[str, Any]) -> dict[str, Any]:
    """What the job shows: which candidate was kept and both candidates' hold-out scores."""
    report = transfer.get("report") or {}
    keys = ("strategy", "chosen", "holdout_gain_pct", "sources")
    brief = {k: report.get(k) for k in keys if k in report}
    for name in ("scratch", report.get("strategy")):
        if isinstance(name, str) and isinstance(report.get(name), dict):
            brief[name] = {"holdout": report[name].get("holdout")}
    return brief


def _fit(cls: type[LocModel], params: dict[str, Any], seed: int, device: str) -> FitFn:
    return fit_model(cls, params, seed=seed, device=device)


def _public_metrics(m: dict[str, Any] | None) -> dict[str, Any]:
    if m is None:
        return {
            "mean_m": None,
            "median_m": None,
            "p95_m": None,
            "floor_hit": None,
            "n": 0,
            "note": "no holdout: the survey was too small to hold paths out",
        }
    return m


def _drop_unheard_aps(fs: FingerprintSet) -> FingerprintSet:
    """Keep the vocabulary order but only APs heard at least once in these rows."""
    heard = ~np.all(np.isnan(fs.rss), axis=0)
    if heard.all():
        return fs
    return fs.with_aps([b for b, h in zip(fs.aps, heard, strict=True) if h])
