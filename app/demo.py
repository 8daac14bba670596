"""`siteloc demo`: a site built from bundled real data, a trained model, and a curl that works as printed.

The bundled data is UJIIndoorLoc building 0 (CC BY 4.0, see README): its trainingData rows
are the survey; one of its validationData rows (recorded months later) is the example query.
"""

from __future__ import annotations

import gzip
import json
import shlex
from pathlib import Path

from sqlalchemy import select

from app.config import Settings
from app.db import Database
from app.migrate import upgrade
from app.models import Site
from app.schemas.api import FinetuneIn, KeyCreate, SiteCreate
from app.services.jobs import JobContext, get_job
from app.services.keys import create_key
from app.services.notify import LocalNotifier
from app.services.runner import execute_job
from app.services.sites import create_site
from app.services.surveys import chunked, ingest
from app.services.training import request_finetune
from ml.data.ujiindoorloc import read_ujiindoorloc

DEMO_DIR = Path(__file__).resolve().parent / "demo_data"
DEMO_SITE = "demo: UJIIndoorLoc building 0"


def prepare_demo(settings: Settings, *, base_url: str) -> str:
    upgrade(settings.resolved_database_url)
    db = Database(settings.resolved_database_url)
    try:
        site_id = _demo_site(db)
        _train_if_needed(db, settings, site_id)
        key = _demo_key(db, settings, site_id)
    finally:
        db.dispose()
    query, truth = _example_query(site_id)
    body = json.dumps(query, separators=(",", ":"))
    curl = (
        f"curl -s -X POST {base_url}/locate -H 'Authorization: Bearer {key}' "
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )
    return "\n".join(
        [
            f"demo site {site_id} ({DEMO_SITE}) has an active wknn model.",
            f"Try it (this scan was recorded at x={truth[0]:.1f}, y={truth[1]:.1f}, floor {truth[2]}):",
            "",
            curl,
            "",
            f"The key above is an 'app' key for the demo site. API docs: {base_url}/docs",
        ]
    )


def _demo_site(db: Database) -> str:
    with db.session() as s:
        existing = s.scalar(select(Site.id).where(Site.name == DEMO_SITE))
        if existing:
            return existing
        site = create_site(s, body=SiteCreate(name=DEMO_SITE))
        with gzip.open(DEMO_DIR / "uji_b0_training.csv.gz", "rt", encoding="utf-8", newline="") as fh:
            ingest(
                s,
                site=site,
                batches=chunked(read_ujiindoorloc(fh)),
                fmt="ujiindoorloc",
                filename="uji_b0_training.csv.gz",
            )
        return site.id


def _train_if_needed(db: Database, settings: Settings, site_id: str) -> None:
    with db.session() as s:
        site = s.get(Site, site_id)
        assert site is not None
        if site.active_version is not None:
            return
        job = request_finetune(s, site=site, body=FinetuneIn(model="wknn"))
        job_id = job.id
    # The same job code the worker runs, executed here so the demo is ready before it serves.
    ctx = JobContext(db=db, settings=settings, device="cpu", notifier=LocalNotifier())
    execute_job(ctx, job_id)
    with db.session() as s:
        job = get_job(s, job_id=job_id)
        if job.state != "succeeded":
            raise RuntimeError(f"demo training failed: {job.error}")


def _demo_key(db: Database, settings: Settings, site_id: str) -> str:
    with db.session() as s:
        _key, plaintext = create_key(s, body=KeyCreate(role="app", sites=[site_id], name="demo"))
    return plaintext


def _example_query(site_id: str) -> tuple[dict[str, object], tuple[float, float, str]]:
    with gzip.open(DEMO_DIR / "uji_b0_validation.csv.gz", "rt", encoding="utf-8", newline="") as fh:
        fp = next(iter(read_ujiindoorloc(fh)))
    wifi = [{"bssid": r.bssid, "rssi": int(r.rssi)} for r in fp.wifi]
    return {"site_id": site_id, "wifi": wifi}, (fp.x, fp.y, fp.floor)
