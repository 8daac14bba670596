"""Issue 19: the OpenAPI spec fuzzed with schemathesis (all its checks, a fixed seed, bounded examples) finds no 5xx
and no answer that violates the spec, in the session's mode (embedded by default, full mode with the env vars).

A site with a trained model is prepared, and half of the generated /locate bodies are pointed at it with its
BSSIDs, so the success path (inference and the query log) is fuzzed too, not only the 404s of random ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import Backend
from tests.integration.conftest import ADMIN, Api, uji_queries

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402

MAX_EXAMPLES = 25
# Every check is on. Data valid in shape can still be refused with the service's own 422 when it cannot be used
# (a scan none of whose APs the site knows, an unknown site in a key's scope, a body with neither wifi nor
# sensors): the spec documents those 422s, so a "schema-valid request rejected" with 422 is expected.
CONFIG = """
[checks]
enabled = true
positive_data_acceptance.expected-statuses = ["2xx", "401", "403", "404", "409", "413", "422", "429"]
"""


@pytest.fixture(scope="module")
def target(backend: Backend) -> Iterator[tuple[Any, str, list[str]]]:
    """The app schemathesis calls (it runs the app's lifespan itself), a trained site and its BSSIDs."""
    from schemathesis.python import asgi

    from app.main import create_app

    with TestClient(create_app(backend.settings())) as client:
        site_id = Api(client, backend).trained_site("fuzzed")
    bssids = sorted({e["bssid"] for q in uji_queries() for e in q["wifi"]})
    # No rate limit for the admin key: the fuzzer sends hundreds of requests with it.
    app = create_app(backend.settings(rate_limit_admin_per_s=0))
    yield app, site_id, bssids
    asgi.shutdown_lifespans()


def _steer(case: Any, site_id: str, bssids: list[str]) -> None:
    """Point half of the /locate bodies (chosen by a hash of the body: deterministic) at the prepared site."""
    body = case.body
    if case.operation.path not in ("/locate", "/locate/batch") or not isinstance(body, dict):
        return
    queries = body.get("queries") if case.operation.path == "/locate/batch" else [body]
    if not isinstance(queries, list):
        return
    for q in queries:
        if not isinstance(q, dict) or hashlib.sha256(repr(q).encode()).digest()[0] % 2:
            continue
        q["site_id"] = site_id
        wifi = q.get("wifi")
        if isinstance(wifi, list):
            for i, e in enumerate(wifi):
                if isinstance(e, dict) and "bssid" in e:
                    e["bssid"] = bssids[i % len(bssids)]


def test_fuzzing_the_spec_finds_no_5xx_and_no_spec_violation(target: tuple[Any, str, list[str]]) -> None:
    app, site_id, bssids = target
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=SchemathesisConfig.from_str(CONFIG))
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,  # a fixed seed: the same examples every run
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            nonlocal calls
            _steer(case, site_id, bssids)
            calls += 1
            case.call_and_validate(headers=ADMIN)

        try:
            run()
        except BaseException as exc:
            failures.append(f"{operation.method.upper()} {operation.path}: {str(exc)[:1500]}")
    assert calls > 100
    assert not failures, "\n\n".join(failures)
