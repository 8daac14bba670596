"""Model versions of a site: list, activate (promotion or rollback)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.deps import RuntimeDep, SessionDep, SiteDep
from app.models import ModelVersion
from app.schemas.api import ModelVersionOut
from app.services import registry

router = APIRouter(tags=["models"])

_METRIC_KEYS = ("mean_m", "median_m", "p95_m", "floor_hit")
# Internal bookkeeping (row ids of the survey holdout), not shown in the API.
HIDDEN_TRAINING_KEYS = ("holdout_fingerprint_ids", "holdout_window_ids")


def version_out(mv: ModelVersion) -> ModelVersionOut:
    metrics = {k: None for k in _METRIC_KEYS} | dict(mv.metrics or {})
    training = {k: v for k, v in (mv.training or {}).items() if k not in HIDDEN_TRAINING_KEYS}
    return ModelVersionOut(
        version=mv.version,
        model=mv.model,
        status=mv.status,  # type: ignore[arg-type]
        status_reason=mv.status_reason,
        source=mv.source,
        parent_version=mv.parent_version,
        created_at=mv.created_at,
        metrics=metrics,
        training=training,
    )


@router.get("/sites/{site_id}/models", response_model=list[ModelVersionOut])
def list_models(site: SiteDep, s: SessionDep) -> list[ModelVersionOut]:
    return [version_out(mv) for mv in registry.list_versions(s, site_id=site.id)]


@router.post("/sites/{site_id}/models/{version}/activate", response_model=ModelVersionOut)
def activate(
    site: SiteDep, version: Annotated[int, Path(ge=1, le=2**31 - 1)], s: SessionDep, rt: RuntimeDep
) -> ModelVersionOut:
    """Make this version the one /locate uses (promotion or rollback). Every API process picks it up
    within a few seconds."""
    mv = registry.activate_and_notify(
        s, site_id=site.id, version=version, reason="activated through the API", notifier=rt.notifier
    )
    return version_out(mv)
