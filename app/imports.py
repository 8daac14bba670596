"""`siteloc import`: a survey file into a site through the same code as the upload API, with progress."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from tqdm import tqdm

from app.config import Settings
from app.db import Database
from app.errors import Invalid
from app.schemas.api import SurveyOut
from app.services import sites as sites_svc
from app.services.surveys import ingest
from app.services.uploads import store_ilc_plans, survey_batches
from ml.data.errors import DataFormatError


class _ProgressReader(io.RawIOBase):
    """A binary file that advances a progress bar by the bytes read."""

    def __init__(self, raw: Any, bar: tqdm) -> None:
        self._raw = raw
        self._bar = bar

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._raw.readinto(b)
        self._bar.update(n or 0)
        return n or 0

    def close(self) -> None:
        self._raw.close()
        super().close()


def import_file(settings: Settings, *, site_id: str, fmt: str, path: Path, window_stride_ms: int) -> SurveyOut:
    db = Database(settings.resolved_database_url)
    try:
        with (
            tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=path.name) as bar,
            open(path, "rb", buffering=0) as raw,
            io.BufferedReader(_ProgressReader(raw, bar), buffer_size=1 << 20) as fh,
            db.session() as s,
        ):
            site = sites_svc.get_site(s, site_id=site_id)
            try:
                out = ingest(
                    s, site=site, batches=survey_batches(fmt, fh, window_stride_ms), fmt=fmt, filename=path.name
                )
                if fmt == "ilc2020":
                    store_ilc_plans(s, site=site, path=str(path))
                return out
            except DataFormatError as exc:
                raise Invalid(f"{path.name}: {exc}") from None
    finally:
        db.dispose()
