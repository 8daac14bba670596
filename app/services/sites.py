"""Sites: create, read, list (scoped to what the caller's key may see)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import NotFound
from app.models import ModelVersion, Site, SurveyFingerprint, Window
from app.schemas.api import ActiveModel, Counts, SiteCreate, SiteOut
from app.security import Principal
from app.services.ids import new_id


def create_site(s: Session, *, body: SiteCreate) -> Site:
    """A new site (caller commits)."""
    floors = None if body.floors is None else list(dict.fromkeys(str(f) for f in body.floors))
    site = Site(id=new_id(), name=body.name, floors=floors)
    s.add(site)
    s.flush()
    return site


def get_site(s: Session, *, site_id: str) -> Site:
    """The site, or NotFound."""
    site = s.get(Site, site_id) if len(site_id) <= 32 else None
    if site is None:
        raise NotFound(f"site {site_id!r} not found")
    return site


def list_sites(s: Session, *, principal: Principal) -> list[Site]:
    """The sites the key may see, oldest first."""
    q = select(Site).order_by(Site.created_at)
    if not principal.is_admin and principal.sites is not None:
        q = q.where(Site.id.in_(principal.sites))
    return list(s.scalars(q))


def site_out(s: Session, *, site: Site, detail: bool = True) -> SiteOut:
    """The API view of a site; with `detail`, its row counts and active model too."""
    out = SiteOut(id=site.id, name=site.name, floors=site.floors, created_at=site.created_at)
    if not detail:
        return out
    n_fp = s.scalar(select(func.count()).select_from(SurveyFingerprint).where(SurveyFingerprint.site_id == site.id))
    n_win = s.scalar(select(func.count()).select_from(Window).where(Window.site_id == site.id))
    out.counts = Counts(fingerprints=n_fp or 0, windows=n_win or 0, queries=site.n_queries)
    if site.active_version is not None:
        name = s.scalar(
            select(ModelVersion.model).where(
                ModelVersion.site_id == site.id, ModelVersion.version == site.active_version
            )
        )
        if name is not None:
            out.active_model = ActiveModel(name=name, version=site.active_version)
    return out
