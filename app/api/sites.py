"""Sites and their surveys."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from app.deps import OperatorKey, RuntimeDep, ScopedSiteId, SessionDep, SiteDep
from app.errors import Forbidden
from app.schemas.api import SiteCreate, SiteOut, SurveyOut
from app.services import sites as svc
from app.services.uploads import receive_survey

router = APIRouter(tags=["sites"])


@router.post("/sites", status_code=status.HTTP_201_CREATED, response_model=SiteOut, response_model_exclude_none=True)
def create_site(body: SiteCreate, s: SessionDep, principal: OperatorKey) -> SiteOut:
    """Create a site (admin, or an operator key not limited to listed sites)."""
    if not principal.is_admin and principal.sites is not None:
        raise Forbidden("this operator key is limited to listed sites and cannot create new ones")
    site = svc.create_site(s, body=body)
    return svc.site_out(s, site=site, detail=False)


@router.get("/sites", response_model=list[SiteOut])
def list_sites(s: SessionDep, principal: OperatorKey) -> list[SiteOut]:
    return [svc.site_out(s, site=site) for site in svc.list_sites(s, principal=principal)]


@router.get("/sites/{site_id}", response_model=SiteOut)
def get_site(site: SiteDep, s: SessionDep) -> SiteOut:
    return svc.site_out(s, site=site)


@router.post(
    "/sites/{site_id}/surveys",
    status_code=status.HTTP_201_CREATED,
    response_model=SurveyOut,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/SurveyIn"}},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file", "format"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "format": {"type": "string", "enum": ["ujiindoorloc", "ilc2020", "jsonl"]},
                        },
                    }
                },
            },
            "required": True,
        }
    },
)
async def upload_survey(site_id: ScopedSiteId, request: Request, rt: RuntimeDep) -> SurveyOut:
    """Labelled survey data: a JSON body `{"fingerprints": [...]}` or a multipart file upload.

    All or nothing: a malformed row anywhere gets a 422 naming it, and nothing is kept.
    """
    # No SiteDep here: its session would stay open while a large file streams in. The store checks the site.
    return await receive_survey(rt, site_id=site_id, request=request)
