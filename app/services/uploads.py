"""Survey uploads: JSON bodies and streamed multipart files in the formats of ml.data."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from typing import IO, Any

from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request

from app.errors import Invalid, PayloadTooLarge
from app.models import Site
from app.runtime import Runtime
from app.schemas.api import SurveyIn, SurveyOut
from app.services import sites as sites_svc
from app.services.codec import fingerprint_from_api
from app.services.plans import put_plan
from app.services.surveys import SurveyBatch, chunked, ingest
from ml.data.errors import DataFormatError

FORMATS = ("ujiindoorloc", "ilc2020", "jsonl")
DEFAULT_WINDOW_STRIDE_MS = 500


async def receive_survey(rt: Runtime, *, site_id: str, request: Request) -> SurveyOut:
    """Store a survey sent as JSON or as a multipart file (the site is checked inside the store's transaction)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "application/json":
        raw = await request.body()
        body = _parse_json_survey(raw, rt.settings.max_survey_fingerprints)
        fps = [fingerprint_from_api(fp) for fp in body.fingerprints]
        return await run_in_threadpool(_store, rt, site_id, lambda: chunked(fps), "json", None)
    if ctype == "multipart/form-data":
        return await _receive_file(rt, site_id, request)
    raise Invalid(
        f"unsupported Content-Type {ctype or '(none)'!r}: send application/json "
        "{'fingerprints': [...]} or multipart/form-data with 'file' and 'format'"
    )


def _parse_json_survey(raw: bytes, limit: int) -> SurveyIn:
    try:
        body = SurveyIn.model_validate_json(raw)
    except ValidationError as exc:
        raise Invalid(json.loads(exc.json(include_url=False, include_input=False))) from None
    if len(body.fingerprints) > limit:
        raise PayloadTooLarge(
            f"{len(body.fingerprints)} fingerprints in one request; the limit is {limit} "
            "(split the survey, or upload a file)"
        )
    return body


async def _receive_file(rt: Runtime, site_id: str, request: Request) -> SurveyOut:
    # Starlette spools each part to a temporary file beyond 1 MB: the upload never sits in memory whole.
    form = await request.form(max_files=1, max_fields=10, max_part_size=1024 * 1024)
    try:
        fmt = form.get("format")
        upload = form.get("file")
        if not isinstance(fmt, str) or fmt not in FORMATS:
            raise Invalid(f"form field 'format' must be one of {', '.join(FORMATS)}; got {fmt!r}")
        if not isinstance(upload, UploadFile):
            raise Invalid("form field 'file' (the survey file) is missing")
        stride = _int_field(form.get("window_stride_ms"), "window_stride_ms", DEFAULT_WINDOW_STRIDE_MS, 50, 60_000)
        filename = upload.filename
        return await run_in_threadpool(_store_file, rt, site_id, upload.file, fmt, filename, stride)
    finally:
        await form.close()


def _int_field(value: Any, name: str, default: int, lo: int, hi: int) -> int:
    if value is None or value == "":
        return default
    try:
        v = int(str(value))
    except ValueError:
        raise Invalid(f"form field {name!r} must be an integer") from None
    if not lo <= v <= hi:
        raise Invalid(f"form field {name!r} must be in [{lo}, {hi}]")
    return v


def _store_file(rt: Runtime, site_id: str, file: IO[bytes], fmt: str, filename: str | None, stride: int) -> SurveyOut:
    # A copy on disk under the uploaded file's own name, so readers' error locations name it.
    with tempfile.TemporaryDirectory(prefix="siteloc-upload-") as tmp:
        path = os.path.join(tmp, _safe_name(filename, fmt))
        file.seek(0)
        with open(path, "wb") as out:
            shutil.copyfileobj(file, out, length=1024 * 1024)
        return _store(rt, site_id, lambda: survey_batches(fmt, path, stride), fmt, filename, plans_from=path)


def _safe_name(filename: str | None, fmt: str) -> str:
    base = os.path.basename(filename or "") or f"upload.{fmt}"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in base)[:200]


def survey_batches(fmt: str, source: str | IO[bytes], stride_ms: int) -> Iterator[SurveyBatch]:
    """Stream a survey file in `fmt` as batches of (fingerprints, sensor windows)."""
    if fmt == "ujiindoorloc":
        from ml.data.ujiindoorloc import read_ujiindoorloc

        return chunked(read_ujiindoorloc(source))
    if fmt == "jsonl":
        from ml.data.jsonl import read_jsonl

        return chunked(read_jsonl(source))
    if fmt == "ilc2020":
        from ml.data.ilc2020 import read_ilc_survey

        return read_ilc_survey(source, stride_ms=stride_ms)
    raise Invalid(f"unknown survey format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _store(
    rt: Runtime,
    site_id: str,
    batches: Callable[[], Iterator[SurveyBatch]],
    fmt: str,
    filename: str | None,
    plans_from: str | None = None,
) -> SurveyOut:
    with rt.db.session() as s:
        site = sites_svc.get_site(s, site_id=site_id)
        try:
            out = ingest(s, site=site, batches=batches(), fmt=fmt, filename=filename)
            if fmt == "ilc2020" and plans_from is not None:
                store_ilc_plans(s, site=site, path=plans_from)
        except DataFormatError as exc:
            raise Invalid(f"{fmt} file: {exc}") from None
    rt.plans.invalidate(site_id)
    return out


def store_ilc_plans(s: Session, *, site: Site, path: str) -> int:
    """The floor plans of an ILC archive (geojson_map.json + floor_info.json per floor), in the survey's
    transaction; returns how many floors had one."""
    from ml.data.floorplans import read_ilc_plans

    plans = read_ilc_plans(path)
    for floor, fc in plans.items():
        put_plan(s, site=site, floor=floor, plan=fc, source="ilc2020")
    return len(plans)
