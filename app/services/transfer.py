"""Cross-site transfer in the finetune job: source artifacts (built once per source set, stored, reused) and
the transfer fit itself (ml.transfer), which trains the scratch baseline beside it and keeps the better."""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import func, select

from app.db import Database
from app.models import ModelVersion, SourceArtifact, Survey
from app.services.jobs import ProgressReporter
from ml.data.features import FingerprintSet
from ml.models.base import LocModel

log = logging.getLogger(__name__)


def _artifact_keys(strategy: str, sources: list[str]) -> list[list[str]]:
    """`encoder` pretrains one base on all sources together; `msta` has one teacher per source site."""
    ordered = sorted(set(sources))
    return [ordered] if strategy == "encoder" else [[s] for s in ordered]


def source_artifacts(
    db: Database,
    *,
    model: str,
    strategy: str,
    sources: list[str],
    params: dict[str, Any],
    seed: int,
    device: str,
    job_id: str,
    progress: ProgressReporter,
    load_set: Any,
) -> tuple[list[Any], list[dict[str, Any]]]:
    """The artifacts for `sources` (reused when none of their surveys changed since, else built and stored),
    and a note per artifact saying which happened. `load_set(site_id)` gives a site's training set."""
    from ml.transfer import SourceArtifact as Artifact
    from ml.transfer import make_source_artifact

    keys = _artifact_keys(strategy, sources)
    out, notes = [], []
    for i, sites in enumerate(keys):
        key = ",".join(sites)
        span = progress.span(i / len(keys), (i + 1) / len(keys))
        cached = _fresh_artifact(db, model, strategy, sites)
        loaded = _load_cached(Artifact.loads, cached)
        if cached is not None and loaded is not None:
            out.append(loaded)
            notes.append({"sites": sites, "artifact_id": cached[2], "built": False})
            continue
        span(0.0, f"building the {strategy} source artifact of {key}")
        site_sets = {sid: load_set(sid) for sid in sites}
        source_models = _source_models(db, sites, model, device) if strategy == "msta" else None
        art = make_source_artifact(
            model, strategy, site_sets, params, source_models=source_models, seed=seed, progress=span, device=device
        )
        blob, config = art.dumps()
        notes.append({"sites": sites, "artifact_id": _store_artifact(db, model, strategy, sites, blob, config, job_id)})
        notes[-1]["built"] = True
        out.append(art)
    return out, notes


def _fresh_artifact(db: Database, model: str, strategy: str, sites: list[str]) -> tuple[bytes, Any, int] | None:
    """(blob, config, id) of the newest stored artifact for these sites, unless one of their surveys is newer."""
    key = ",".join(sites)
    with db.session() as s:
        newest_survey = s.scalar(select(func.max(Survey.created_at)).where(Survey.site_id.in_(sites)))
        row = s.scalar(
            select(SourceArtifact)
            .where(SourceArtifact.model == model, SourceArtifact.strategy == strategy, SourceArtifact.sites_key == key)
            .order_by(SourceArtifact.id.desc())
            .limit(1)
        )
        fresh = row is not None and (newest_survey is None or _aware(row.created_at) >= _aware(newest_survey))
        return (row.blob, row.config, row.id) if fresh and row is not None else None


def _load_cached(loads: Any, cached: tuple[bytes, Any, int] | None) -> Any:
    """A stored artifact, or None when there is none or it is in a format this build no longer reads (then it is
    rebuilt, as when a source survey changed)."""
    from ml.serialize import ModelFormatError

    if cached is None:
        return None
    try:
        return loads(cached[0], cached[1])
    except ModelFormatError as exc:
        log.warning("stored source artifact %s is unreadable (%s); rebuilding it", cached[2], exc)
        return None


def _store_artifact(
    db: Database, model: str, strategy: str, sites: list[str], blob: bytes, config: Any, job_id: str
) -> int:
    with db.session() as s:
        rec = SourceArtifact(
            model=model, strategy=strategy, sites_key=",".join(sites), config=config, blob=blob, job_id=job_id
        )
        s.add(rec)
        s.flush()
        return int(rec.id)


def mtloc_imu_artifact(
    db: Database,
    *,
    sources: list[str],
    params: dict[str, Any],
    seed: int,
    device: str,
    job_id: str,
    progress: ProgressReporter,
    load_set: Any,
) -> tuple[Any, dict[str, Any]]:
    """MTLoc's IMU-LSTM pretrained on all `sources` together: the stored one when none of their surveys changed
    since and it was made with the same pretraining settings, else pretrained now and stored. Both `frozen`
    and `finetune` use it."""
    from ml.models.mtloc import ImuArtifact, MTLocConfig, pretrain_imu, pretrain_settings

    sites = sorted(set(sources))
    want = pretrain_settings(MTLocConfig.parse(params), seed)
    cached = _fresh_artifact(db, "mtloc", "imu-lstm", sites)
    if cached is not None and all(cached[1].get(k) == v for k, v in want.items()):
        loaded = _load_cached(ImuArtifact.loads, cached)
        if loaded is not None:
            return loaded, {"sites": sites, "artifact_id": cached[2], "built": False}
    progress(0.0, f"pretraining the IMU-LSTM on {', '.join(sites)}")
    art = pretrain_imu({sid: load_set(sid) for sid in sites}, params, seed=seed, progress=progress, device=device)
    blob, config = art.dumps()
    art_id = _store_artifact(db, "mtloc", "imu-lstm", sites, blob, config, job_id)
    return art, {"sites": sites, "artifact_id": art_id, "built": True}


def _source_models(db: Database, sites: list[str], model: str, device: str) -> dict[str, LocModel]:
    """Each source site's active network of the same kind, when it has one (MSTA's Expert Training uses it)."""
    from ml.serialize import loads

    found: dict[str, LocModel] = {}
    with db.session() as s:
        for sid in sites:
            mv = s.scalar(
                select(ModelVersion).where(
                    ModelVersion.site_id == sid, ModelVersion.status == "active", ModelVersion.model == model
                )
            )
            if mv is not None:
                found[sid] = loads(mv.weights, mv.config, device=device)
    return found


def fit_with_transfer(
    *,
    model: str,
    strategy: str,
    train: FingerprintSet,
    holdout: Any,
    artifacts: list[Any],
    params: dict[str, Any],
    seed: int,
    device: str,
    progress: Any,
) -> tuple[LocModel, dict[str, Any]]:
    from ml.transfer import fit_transfer

    return fit_transfer(
        model, strategy, train, artifacts, params, holdout=holdout, seed=seed, progress=progress, device=device
    )


def _aware(dt: Any) -> Any:
    """SQLite returns naive datetimes (stored as UTC); compare like with like."""
    from datetime import UTC

    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)
