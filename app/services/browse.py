"""Read-only listings for operators and admins: survey points, recent queries, one model version, jobs, keys.
Nothing here writes."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import NotFound
from app.models import ApiKey, Job, ModelVersion, Query, SurveyFingerprint
from app.schemas.browse import BBox, KeyInfo, QueriesOut, QueryPoint, SurveyPoint, SurveyPointsOut
from app.security import Principal


def survey_points(s: Session, *, site_id: str, floor: str | None, limit: int) -> SurveyPointsOut:
    """Survey positions of a site (one floor or all): every k-th of them, at most `limit`."""
    fp = SurveyFingerprint
    floors = sorted(s.scalars(select(fp.floor).where(fp.site_id == site_id).distinct()))
    where = [fp.site_id == site_id] + ([fp.floor == floor] if floor is not None else [])
    total, lo_x, lo_y, hi_x, hi_y = s.execute(
        select(func.count(), func.min(fp.x), func.min(fp.y), func.max(fp.x), func.max(fp.y)).where(*where)
    ).one()
    if not total:
        return SurveyPointsOut(floors=floors, bbox=None, total=0, points=[])
    # Every k-th row of the site's survey (in upload order): an even sample, and only `limit` rows leave the
    # database.
    step = -(-total // limit)
    rn = func.row_number().over(order_by=fp.id).label("rn")
    ranked = select(fp.x, fp.y, fp.floor, fp.path, rn).where(*where).subquery()
    stmt = (
        select(ranked.c.x, ranked.c.y, ranked.c.floor, ranked.c.path)
        .where((ranked.c.rn - 1) % step == 0)
        .order_by(ranked.c.rn)
        .limit(limit)
    )
    points = [SurveyPoint(x=x, y=y, floor=f, path=p) for x, y, f, p in s.execute(stmt)]
    bbox = BBox(min_x=lo_x, min_y=lo_y, max_x=hi_x, max_y=hi_y)
    return SurveyPointsOut(floors=floors, bbox=bbox, total=total, points=points)


def recent_queries(s: Session, *, site_id: str, limit: int) -> QueriesOut:
    """The site's newest /locate answers (query ids are time-ordered)."""
    total = s.scalar(select(func.count()).select_from(Query).where(Query.site_id == site_id)) or 0
    rows = s.execute(
        select(
            Query.id,
            Query.created_at,
            Query.x,
            Query.y,
            Query.floor,
            Query.error_m,
            Query.model_name,
            Query.model_version,
            Query.device,
        )
        .where(Query.site_id == site_id)
        .order_by(Query.id.desc())
        .limit(limit)
    )
    queries = [
        QueryPoint(query_id=i, created_at=c, x=x, y=y, floor=f, error_m=e, model=m, version=v, device=d)
        for i, c, x, y, f, e, m, v, d in rows
    ]
    return QueriesOut(total=total, queries=queries)


def get_version(s: Session, *, site_id: str, version: int) -> ModelVersion:
    mv = s.scalar(select(ModelVersion).where(ModelVersion.site_id == site_id, ModelVersion.version == version))
    if mv is None:
        raise NotFound(f"site {site_id!r} has no model version {version}")
    return mv


def list_jobs(s: Session, *, principal: Principal, site_id: str | None, limit: int) -> list[Job]:
    """Newest jobs the key may see (its sites' jobs; site-less jobs only for keys on every site)."""
    stmt = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if site_id is not None:
        principal.require_site(site_id)
        stmt = stmt.where(Job.site_id == site_id)
    elif not principal.is_admin and principal.sites is not None:
        stmt = stmt.where(Job.site_id.in_(sorted(principal.sites)))
    return list(s.scalars(stmt))


def list_keys(s: Session, *, include_revoked: bool) -> list[KeyInfo]:
    stmt = select(ApiKey).order_by(ApiKey.created_at.desc())
    if not include_revoked:
        stmt = stmt.where(ApiKey.revoked_at.is_(None))
    return [
        KeyInfo(
            id=k.id,
            name=k.name,
            role=k.role,
            sites=k.sites,
            prefix=k.prefix,
            created_at=k.created_at,
            revoked_at=k.revoked_at,
        )
        for k in s.scalars(stmt)
    ]
