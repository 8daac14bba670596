"""The CLI's remote commands as real processes against a real `siteloc serve` (SITELOC_URL / SITELOC_KEY or
--url / --key): sites, models, activate, finetune, jobs watch (exit status from the job), import over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FIXTURES
from tests.live import LiveServer, TrainedSite, trained_wknn_site

pytestmark = pytest.mark.skipif(
    os.environ.get("SITELOC_TEST_DATABASE_URL") is not None, reason="CLI tests run in the embedded pass"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(tmp_path_factory.mktemp("cli-server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def site(server: LiveServer) -> TrainedSite:
    return trained_wknn_site(server, versions=2)


def siteloc(
    server: LiveServer, *args: str, key: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SITELOC_")}
    env.update(SITELOC_URL=server.url, SITELOC_KEY=key or server.key)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_sites_and_models_tables(server: LiveServer, site: TrainedSite) -> None:
    out = siteloc(server, "sites")
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith(site.id))
    assert "264" in row and "wknn v1" in row
    out = siteloc(server, "models", site.id)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:4] == ["version", "model", "status", "source"]
    assert {line.split()[0]: line.split()[2] for line in lines[1:]} == {"1": "active", "2": "candidate"}


def test_activate_then_roll_back(server: LiveServer, site: TrainedSite) -> None:
    out = siteloc(server, "activate", site.id, "2")
    assert out.returncode == 0 and "version 2 (wknn) is active" in out.stdout, out.stderr
    with server.client() as c:
        assert c.site(site.id).active_model.version == 2  # type: ignore[union-attr]
    assert siteloc(server, "activate", site.id, "1").returncode == 0
    with server.client() as c:
        assert c.site(site.id).active_model.version == 1  # type: ignore[union-attr]


def test_errors_print_the_servers_message_not_a_traceback(server: LiveServer, site: TrainedSite) -> None:
    out = siteloc(server, "activate", site.id, "99")
    assert out.returncode == 1 and "404" in out.stderr and "no model version 99" in out.stderr
    assert "Traceback" not in out.stderr
    out = siteloc(server, "sites", key="sl_wrong")
    assert out.returncode == 1 and "401" in out.stderr and "Traceback" not in out.stderr
    out = siteloc(server, "finetune", site.id, "--model", "nope")
    assert out.returncode == 2 and "model" in out.stderr and "Traceback" not in out.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("SITELOC_")}
    dead = subprocess.run(
        [sys.executable, "-m", "app.cli", "sites", "--url", "http://127.0.0.1:9", "--key", "k"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert dead.returncode == 1 and "127.0.0.1:9" in dead.stderr and "Traceback" not in dead.stderr


def test_finetune_then_jobs_watch_exits_with_the_jobs_state(server: LiveServer, site: TrainedSite) -> None:
    out = siteloc(server, "finetune", site.id, "--model", "wknn", "--param", "k=4")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split()[-1]
    watch = siteloc(server, "jobs", "watch", job_id)
    assert watch.returncode == 0, watch.stderr
    assert f"job {job_id} succeeded, model version 3" in watch.stdout
    assert "%" in watch.stderr  # the progress bar (tqdm writes to stderr)
    bad = siteloc(server, "finetune", site.id, "--model", "wknn", "--param", "holdout_fraction=1.5", "--watch")
    if bad.returncode == 1 and "job " in bad.stdout:  # accepted, then failed in the worker
        assert "failed: " in bad.stderr and "holdout_fraction" in bad.stderr
    else:  # refused when asked
        assert bad.returncode == 1 and "holdout_fraction" in bad.stderr
    listed = siteloc(server, "jobs", "list", "--site", site.id)
    assert listed.returncode == 0 and job_id in listed.stdout


def test_import_over_http_then_locally(server: LiveServer, tmp_path: Path) -> None:
    with server.client() as c:
        remote_site = c.create_site("imported over HTTP").id
    out = siteloc(
        server, "import", "--site", remote_site, "--format", "ujiindoorloc", str(FIXTURES / "uji_train_small.csv")
    )
    assert out.returncode == 0, out.stderr
    assert "264 fingerprints" in out.stdout
    with server.client() as c:
        assert c.site(remote_site).counts.fingerprints == 264  # type: ignore[union-attr]
    bad = siteloc(server, "import", "--site", "nope", "--format", "jsonl", str(FIXTURES / "survey_small.jsonl"))
    assert bad.returncode == 1 and "nope" in bad.stderr and "Traceback" not in bad.stderr
    # locally (no --url, no SITELOC_URL): into this machine's database
    env = {k: v for k, v in os.environ.items() if not k.startswith("SITELOC_")}
    env.update(SITELOC_DATA_DIR=str(tmp_path / "data"))
    run = [sys.executable, "-m", "app.cli"]
    subprocess.run([*run, "db", "upgrade"], env=env, check=True, capture_output=True, timeout=120)
    local = subprocess.run(
        [*run, "import", "--site", "missing", "--format", "jsonl", str(FIXTURES / "survey_small.jsonl")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert local.returncode == 1 and "missing" in local.stderr and "not found" in local.stderr
