"""/locate's plain-ASGI way in (app.api.locate.LocatePath) answers exactly as FastAPI's route does."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Receive, Scope, Send

from tests.integration.conftest import ADMIN, Api, uji_queries


@pytest.fixture(scope="module")
def site(api: Api) -> str:
    return api.trained_site("locate path")


@pytest.fixture(scope="module")
def via_router(api: Api) -> TestClient:
    """The same app and runtime, entered below `LocatePath`: FastAPI's middleware, router and route."""
    app = api.client.app
    assert isinstance(app, FastAPI)

    async def fastapi_stack(scope: Scope, receive: Receive, send: Send) -> None:
        await FastAPI.__call__(app, scope, receive, send)

    return TestClient(fastapi_stack)  # no lifespan: the api fixture's runtime is already running


def _cases(site: str) -> list[tuple[str, str, bytes, dict[str, str]]]:
    wifi = uji_queries()[0]["wifi"]
    json_ = {"Content-Type": "application/json"}
    one = b'{"site_id": "%s", "wifi": %s}' % (site.encode(), str(wifi).replace("'", '"').encode())
    return [
        ("ok", "/locate", one, {**ADMIN, **json_}),
        ("batch", "/locate/batch", b'{"queries": [%s, %s]}' % (one, one), {**ADMIN, **json_}),
        ("no key", "/locate", one, json_),
        ("bad key", "/locate", one, {"Authorization": "Bearer nope", **json_}),
        ("not json", "/locate", b"{not json", {**ADMIN, **json_}),
        ("invalid", "/locate", b'{"site_id": 7, "wifi": [{"bssid": "", "rssi": 500}]}', {**ADMIN, **json_}),
        ("unknown site", "/locate", b'{"site_id": "nosuchsite", "wifi": [{"bssid": "a", "rssi": -50}]}', ADMIN),
        ("nothing", "/locate", b"{}", ADMIN),
        ("too large", "/locate", b'{"wifi": [], "pad": "%s"}' % (b"x" * 300_000), ADMIN),
        ("empty batch", "/locate/batch", b'{"queries": []}', ADMIN),
    ]


def _comparable(body: Any) -> Any:
    if isinstance(body, dict):
        return {k: _comparable(v) for k, v in body.items() if k != "query_id"}
    if isinstance(body, list):
        return [_comparable(v) for v in body]
    return body


def test_both_ways_in_give_the_same_answers(api: Api, site: str, via_router: TestClient) -> None:
    for name, path, body, headers in _cases(site):
        fast = api.post(path, content=body, headers=headers)
        slow = via_router.post(path, content=body, headers=headers)
        assert fast.status_code == slow.status_code, (name, fast.text, slow.text)
        assert _comparable(fast.json()) == _comparable(slow.json()), name
        for h in ("content-type", "www-authenticate", "retry-after"):
            assert fast.headers.get(h) == slow.headers.get(h), (name, h)
        if fast.status_code == 200:
            results = fast.json().get("results", [fast.json()])
            assert all(r["query_id"] for r in results)


def test_the_plain_path_is_what_answers_and_it_is_counted(api: Api, site: str, monkeypatch: pytest.MonkeyPatch) -> None:
    front = api.client.app._front  # type: ignore[attr-defined]
    answered: list[str] = []
    real = front._answer

    async def spy(path: str, scope: Scope, receive: Receive, send: Send) -> int:
        answered.append(path)
        return int(await real(path, scope, receive, send))

    monkeypatch.setattr(front, "_answer", spy)
    q = {"site_id": site, "wifi": uji_queries()[1]["wifi"]}
    before = _count(api, "/locate", "200")
    assert api.post("/locate", json=q, headers=ADMIN).status_code == 200
    assert api.post("/locate", json=q).status_code == 401
    assert api.post("/locate/batch", json={"queries": [q]}, headers=ADMIN).status_code == 200
    assert answered == ["/locate", "/locate", "/locate/batch"]
    assert _count(api, "/locate", "200") == before + 1
    assert _count(api, "/locate", "401") >= 1
    # Other methods and paths still go through FastAPI: 405 and a redirect, as before.
    assert api.get("/locate", headers=ADMIN).status_code == 405
    assert api.post("/locate/", json=q, headers=ADMIN, follow_redirects=False).status_code == 307
    assert answered == ["/locate", "/locate", "/locate/batch"]


def _count(api: Api, route: str, status: str) -> float:
    for line in api.get("/metrics").text.splitlines():
        if (
            line.startswith("siteloc_http_requests_total{")
            and f'route="{route}"' in line
            and f'status="{status}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
