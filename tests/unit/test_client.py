"""app.client against a real local HTTP server that answers what the test scripts: the error hierarchy with the
server's detail, and retries with backoff on 503/429 (sync and async)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.client import (
    ApiError,
    AsyncClient,
    Client,
    Conflict,
    Invalid,
    NotFound,
    RetryPolicy,
    ServerError,
    TransportError,
    Unavailable,
)
from tests.live import free_port

FAST = RetryPolicy(retries=3, backoff_s=0.01, max_backoff_s=0.05)


class Script:
    """Answers to give, in order (status, body, headers); the last repeats. Records the requests."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, object, dict[str, str]]] = []
        self.seen: list[tuple[str, str, str]] = []


@pytest.fixture
def scripted() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            script.seen.append((self.command, self.path, self.rfile.read(length).decode()))
            status, body, headers = script.answers[0] if len(script.answers) == 1 else script.answers.pop(0)
            raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if not isinstance(body, str) else "text/plain")
            self.send_header("Content-Length", str(len(raw)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_DELETE = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", script
    finally:
        server.shutdown()
        server.server_close()


JOB = {
    "id": "j1",
    "kind": "finetune",
    "site_id": "s1",
    "state": "succeeded",
    "progress": 1.0,
    "message": "done",
    "created_at": "2026-01-01T00:00:00Z",
}


def test_503_and_429_are_retried_then_the_answer_is_parsed(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    script.answers = [
        (503, {"detail": "database unavailable"}, {}),
        (429, {"detail": "slow down"}, {"Retry-After": "0"}),
        (200, JOB, {}),
    ]
    with Client(url, "k", retry=FAST) as c:
        job = c.job("j1")
    assert job.state == "succeeded" and job.progress == 1.0
    assert [s[:2] for s in script.seen] == [("GET", "/jobs/j1")] * 3


def test_retries_give_up_with_the_servers_detail(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    script.answers = [(503, {"detail": "not ready: database"}, {})]
    with Client(url, "k", retry=FAST) as c, pytest.raises(Unavailable) as err:
        c.job("j1")
    assert err.value.detail == "not ready: database" and err.value.status_code == 503
    assert len(script.seen) == 4  # the first try and 3 retries


@pytest.mark.parametrize(
    ("status", "cls"), [(404, NotFound), (409, Conflict), (422, Invalid), (500, ServerError), (418, ApiError)]
)
def test_errors_map_to_one_hierarchy_and_are_not_retried(
    scripted: tuple[str, Script], status: int, cls: type[ApiError]
) -> None:
    url, script = scripted
    script.answers = [(status, {"detail": f"reason {status}"}, {})]
    with Client(url, "k", retry=FAST) as c, pytest.raises(cls) as err:
        c.activate("s1", 3)
    assert type(err.value) is cls and err.value.status_code == status and err.value.detail == f"reason {status}"
    assert str(err.value) == f"{status}: reason {status}" and len(script.seen) == 1


def test_validation_details_read_as_one_line(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    detail = [{"loc": ["body", "wifi", 0, "rssi"], "msg": "Input should be less than or equal to 0"}]
    script.answers = [(422, {"detail": detail}, {})]
    with Client(url, "k", retry=FAST) as c, pytest.raises(Invalid) as err:
        c.locate(site_id="s1", wifi=[{"bssid": "aa:bb:cc:dd:ee:ff", "rssi": -40}])
    assert err.value.detail == detail and str(err.value) == "422: wifi.0.rssi: Input should be less than or equal to 0"


def test_bodies_are_checked_with_the_servers_schemas_before_sending(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    with Client(url, "k", retry=FAST) as c, pytest.raises(ValueError, match="model"):
        c.finetune("s1", model="no-such-model")
    assert script.seen == []


def test_no_server_is_a_transport_error() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", "k", retry=FAST) as c, pytest.raises(TransportError):
        c.sites()


def test_async_client_retries_and_parses(scripted: tuple[str, Script]) -> None:
    url, script = scripted
    script.answers = [(503, {"detail": "busy"}, {}), (200, {"job_id": "j9"}, {})]

    async def go() -> str:
        async with AsyncClient(url, "k", retry=FAST) as c:
            return await c.finetune("s1", model="wknn")

    assert asyncio.run(go()) == "j9"
    assert json.loads(script.seen[-1][2]) == {"model": "wknn", "seed": 0, "params": {}}


def test_the_async_client_has_every_call_of_the_sync_one() -> None:
    import inspect

    public = {n for n, f in inspect.getmembers(Client, inspect.isfunction) if not n.startswith("_")} - {"close"}
    for name in public:
        assert inspect.iscoroutinefunction(getattr(AsyncClient, name, None)), name
        sync_params = list(inspect.signature(getattr(Client, name)).parameters)
        assert list(inspect.signature(getattr(AsyncClient, name)).parameters) == sync_params, name
