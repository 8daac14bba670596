"""The read-only listings (survey points, queries, one version, jobs, keys) and the console's static files,
through the Python client (app.client) against a real uvicorn server on this session's backend."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn

from app.client import Client, Forbidden, Invalid, NotFound, Unauthorized
from tests.conftest import ADMIN_KEY, Backend
from tests.integration.conftest import uji_queries, uji_survey
from tests.live import free_port


@dataclass
class Served:
    url: str
    admin: Client
    site_id: str
    versions: list[int]
    n_fingerprints: int
    n_queries: int


@pytest.fixture(scope="module")
def served(backend: Backend) -> Iterator[Served]:
    from app.main import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(backend.settings()), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    admin = Client(url, ADMIN_KEY)
    try:
        site = admin.create_site("listings")
        survey = uji_survey()
        admin.upload_survey(site.id, survey)
        versions = []
        for k in (3, 5):
            job = admin.job_wait(admin.finetune(site.id, model="wknn", params={"k": k}), timeout=600)
            assert job.state == "succeeded", job.error
            versions.append(job.model_version)
        queries = [{"site_id": site.id, "wifi": q["wifi"]} for q in uji_queries()]
        admin.locate_batch(queries)
        yield Served(url, admin, site.id, versions, len(survey), len(queries))
    finally:
        admin.close()
        server.should_exit = True
        thread.join(timeout=30)


def test_survey_points_cover_the_survey_and_respect_floor_and_limit(served: Served) -> None:
    c, site = served.admin, served.site_id
    everything = c.survey_points(site, limit=20000)
    assert everything.total == served.n_fingerprints == len(everything.points)
    b = everything.bbox
    assert b is not None
    assert all(b.min_x <= p.x <= b.max_x and b.min_y <= p.y <= b.max_y for p in everything.points)
    floor = everything.floors[0]
    one = c.survey_points(site, floor=floor)
    assert one.total == sum(p.floor == floor for p in everything.points) and {p.floor for p in one.points} == {floor}
    assert one.floors == everything.floors
    few = c.survey_points(site, limit=10)
    assert few.total == served.n_fingerprints and len(few.points) == 10
    assert few.points[0] == everything.points[0]  # every k-th row, from the first
    with pytest.raises(Invalid):
        c.survey_points(site, limit=0)


def test_recent_queries_newest_first_with_their_error(served: Served) -> None:
    out = served.admin.queries(served.site_id, limit=5)
    assert out.total == served.n_queries and len(out.queries) == 5
    ids = [q.query_id for q in out.queries]
    assert ids == sorted(ids, reverse=True)
    assert all(q.error_m > 0 and q.model == "wknn" for q in out.queries)


def test_one_version_has_cdf_points_from_its_holdout_metrics(served: Served) -> None:
    c = served.admin
    v = c.model(served.site_id, served.versions[1])
    assert v.version == served.versions[1] and v.job_id and v.cdf_source == "holdout"
    assert [p.fraction for p in v.cdf] == [i / 20 for i in range(21)]
    errors = [p.error_m for p in v.cdf]
    assert errors == sorted(errors) and errors[0] >= 0
    assert abs(errors[10] - v.metrics["median_m"]) < 1e-3 and abs(errors[19] - v.metrics["p95_m"]) < 1e-3
    assert "holdout_fingerprint_ids" not in v.training
    with pytest.raises(NotFound, match="no model version 99"):
        c.model(served.site_id, 99)


def test_jobs_listing_newest_first_and_scoped_to_the_key(served: Served) -> None:
    c = served.admin
    jobs = c.jobs(site_id=served.site_id)
    assert [j.model_version for j in jobs[:2]] == served.versions[::-1]
    other = c.create_site("someone else's")
    scoped_key = c.create_key("operator", sites=[served.site_id], name="scoped").key
    other_key = c.create_key("operator", sites=[other.id], name="other").key
    app_key = c.create_key("app", name="phone").key
    assert scoped_key and other_key and app_key
    with Client(served.url, scoped_key) as scoped:
        assert {j.site_id for j in scoped.jobs()} == {served.site_id}
    with Client(served.url, other_key) as other_op:
        assert other_op.jobs() == []
        with pytest.raises(Forbidden, match="not allowed to act on site"):
            other_op.jobs(site_id=served.site_id)
        with pytest.raises(Forbidden):
            other_op.survey_points(served.site_id)
    with Client(served.url, app_key) as app, pytest.raises(Forbidden, match="role"):
        app.jobs()


def test_keys_listing_is_admin_only_and_hides_revoked_keys(served: Served) -> None:
    c = served.admin
    made = c.create_key("operator", name="to revoke")
    assert made.key
    listed = {k.id: k for k in c.list_keys()}
    assert listed[made.id].prefix == made.key[:10] and listed[made.id].role == "operator"
    with Client(served.url, made.key) as op, pytest.raises(Forbidden):
        op.list_keys()
    c.revoke_key(made.id)
    assert made.id not in {k.id for k in c.list_keys()}
    revoked = {k.id: k for k in c.list_keys(include_revoked=True)}[made.id]
    assert revoked.revoked_at is not None
    with Client(served.url, "sl_wrong") as nobody, pytest.raises(Unauthorized) as err:
        nobody.list_keys()
    assert err.value.status_code == 401 and isinstance(err.value.detail, str)


def test_openapi_documents_the_listings_with_their_roles(served: Served) -> None:
    spec = httpx.get(f"{served.url}/openapi.json").json()
    for path in (
        "/sites/{site_id}/survey/points",
        "/sites/{site_id}/queries",
        "/sites/{site_id}/models/{version}",
        "/jobs",
        "/keys",
    ):
        get = spec["paths"][path]["get"]
        assert "Role:" in get["description"], path
    assert "post" in spec["paths"]["/keys"] and "/console" not in spec["paths"]


def test_root_points_to_the_console_which_is_served_offline(served: Served) -> None:
    root = httpx.get(f"{served.url}/")
    assert root.status_code == 307 and root.headers["location"] == "/console/"
    page = httpx.get(f"{served.url}/console/")
    assert page.status_code == 200 and 'src="app.js"' in page.text
    for name in ("app.js", "api.js", "pages.js", "map.js", "chart.js", "ui.js"):
        r = httpx.get(f"{served.url}/console/{name}")
        assert r.status_code == 200 and "javascript" in r.headers["content-type"], name
        # nothing fetched from elsewhere (no CDN): the only absolute URL is SVG's namespace name
        text = r.text.replace("http://www.w3.org/2000/svg", "")
        assert "http://" not in text and "https://" not in text, name


def test_a_201_is_committed_before_the_client_reads_it(served: Served) -> None:
    # The request's transaction commits before the response goes out (SessionDep scope="function"): the next
    # request on the same connection always finds what the previous one created.
    for i in range(20):
        made = served.admin.create_site(f"race {i}")
        assert served.admin.site(made.id).name == f"race {i}"
