"""`siteloc` command line: serve, worker, beat, db upgrade, keys create, import, demo, bench."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from app.cli_remote import client_errors, remote_options
from app.cli_remote import register as register_remote
from app.config import Settings, get_settings


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """siteloc: self-hosted indoor localization service."""


# -- serving -------------------------------------------------------------------------------------


def ensure_admin_key(settings: Settings) -> str | None:
    """In a fresh database with no admin key configured, create one and return its plaintext (shown once)."""
    if settings.bootstrap_admin_key is not None:
        return None
    from app.db import Database
    from app.schemas.api import KeyCreate
    from app.services.keys import create_key, has_admin_key

    db = Database(settings.resolved_database_url)
    try:
        with db.session() as s:
            if has_admin_key(s):
                return None
            _key, plaintext = create_key(s, body=KeyCreate(role="admin", name="created by siteloc serve"))
        return plaintext
    finally:
        db.dispose()


def _prepare_database(settings: Settings, migrate: bool) -> None:
    from app.migrate import upgrade

    if migrate:
        upgrade(settings.resolved_database_url)


def _run_server(settings: Settings, host: str, port: int, workers: int) -> None:
    import uvicorn

    from app.main import create_app

    # Access lines are info-level, below the warning level served at: access_log=False skips building them.
    # uvicorn picks httptools and uvloop (uvicorn[standard]) by itself.
    if workers > 1:
        # Embedded mode too: the processes share the SQLite file (WAL) and elect one of them to run jobs
        # (worker.dispatch.EmbeddedWorker); each stores its answers before returning them.
        uvicorn.run(
            "app.main:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            access_log=False,
        )
    else:
        uvicorn.run(create_app(settings), host=host, port=port, log_level="warning", access_log=False)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=int,
    help="API processes (uvicorn workers; embedded mode: sharing the SQLite file)",
)
@click.option(
    "--migrate/--no-migrate",
    default=None,
    help="Apply database migrations first (default: yes in embedded mode, no in full mode)",
)
def serve(host: str, port: int, workers: int, migrate: bool | None) -> None:
    """Run the API (embedded mode unless SITELOC_DATABASE_URL / SITELOC_REDIS_URL name real services)."""
    _setup_logging()
    settings = get_settings()
    _prepare_database(settings, settings.embedded if migrate is None else migrate)
    key = ensure_admin_key(settings)
    mode = "embedded (SQLite + in-process worker)" if settings.embedded else "full (PostgreSQL/Redis + Celery)"
    click.echo(f"siteloc serving on http://{host}:{port}  mode: {mode}  docs: http://{host}:{port}/docs")
    if key:
        click.echo(f"admin key (shown once, store it): {key}")
    sys.stdout.flush()
    _run_server(settings, host, port, workers)


@main.command()
@click.option("--concurrency", default=1, show_default=True, type=int, help="training processes")
@click.option("--loglevel", default="INFO", show_default=True)
def worker(concurrency: int, loglevel: str) -> None:
    """Run a Celery worker (full mode: needs SITELOC_REDIS_URL)."""
    settings = get_settings()
    if settings.embedded:
        raise click.UsageError("SITELOC_REDIS_URL is not set: in embedded mode `siteloc serve` runs jobs itself")
    from worker.celery_app import celery_app

    celery_app.worker_main(
        [
            "worker",
            f"--loglevel={loglevel}",
            "-Q",
            settings.job_queue,
            f"--concurrency={concurrency}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@main.command()
@click.option("--loglevel", default="INFO", show_default=True)
def beat(loglevel: str) -> None:
    """Run Celery beat, the scheduler of periodic jobs (full mode)."""
    settings = get_settings()
    if settings.embedded:
        raise click.UsageError("SITELOC_REDIS_URL is not set: celery beat needs the Redis broker")
    from worker.celery_app import celery_app

    settings.data_dir.mkdir(parents=True, exist_ok=True)  # beat keeps its schedule file there
    celery_app.start(["beat", f"--loglevel={loglevel}", "--schedule", str(settings.data_dir / "celerybeat-schedule")])


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply migrations up to REVISION."""
    from app.migrate import upgrade

    settings = get_settings()
    upgrade(settings.resolved_database_url, revision)
    click.echo(f"database at {revision}: {_safe_url(settings.resolved_database_url)}")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--role", type=click.Choice(["app", "operator", "admin"]), required=True)
@click.option("--site", "sites", multiple=True, help="limit the key to this site (repeatable)")
@click.option("--name", default="", help="a label for the key")
def keys_create(role: str, sites: tuple[str, ...], name: str) -> None:
    """Create an API key and print it (the plaintext is shown only now)."""
    from app.db import Database
    from app.errors import SitelocError
    from app.schemas.api import KeyCreate
    from app.services.keys import create_key

    settings = get_settings()
    db = Database(settings.resolved_database_url)
    try:
        with db.session() as s:
            key, plaintext = create_key(s, body=KeyCreate(role=role, sites=list(sites) or None, name=name))  # type: ignore[arg-type]
    except SitelocError as exc:
        raise click.ClickException(str(exc.detail)) from None
    finally:
        db.dispose()
    click.echo(f"id: {key.id}\nrole: {role}\nsites: {', '.join(sites) or 'all'}\nkey: {plaintext}")


# -- data ----------------------------------------------------------------------------------------


@main.command("import")
@click.option("--site", "site_id", required=True, help="site id")
@click.option("--format", "fmt", type=click.Choice(["ujiindoorloc", "ilc2020", "jsonl"]), required=True)
@click.option("--window-stride-ms", default=500, show_default=True, type=int, help="ilc2020 sensor-window stride")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@remote_options
def import_cmd(site_id: str, fmt: str, window_stride_ms: int, path: Path, url: str | None, key: str | None) -> None:
    """Import a survey file into a site (same code as the upload API), with a progress bar.

    Into this machine's database, or with --url (or SITELOC_URL) uploaded to that server with --key."""
    from app.errors import SitelocError
    from app.imports import import_file

    _setup_logging("WARNING")
    if url:
        out = _upload_remote(url, key, site_id=site_id, fmt=fmt, path=path, window_stride_ms=window_stride_ms)
        click.echo(f"survey {out.survey_id}: {out.fingerprints} fingerprints, {out.windows} windows, {out.paths} paths")
        return
    try:
        out = import_file(get_settings(), site_id=site_id, fmt=fmt, path=path, window_stride_ms=window_stride_ms)
    except SitelocError as exc:
        raise click.ClickException(str(exc.detail)) from None
    click.echo(f"survey {out.survey_id}: {out.fingerprints} fingerprints, {out.windows} windows, {out.paths} paths")


def _upload_remote(url: str, key: str | None, *, site_id: str, fmt: str, path: Path, window_stride_ms: int) -> Any:
    from tqdm import tqdm

    from app.client import Client

    if not key:
        raise click.UsageError("an API key is needed to upload: --key or SITELOC_KEY")
    with (
        client_errors(),
        Client(url, key) as client,
        tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc="upload") as bar,
    ):
        return client.upload_survey_file(site_id, path, fmt=fmt, progress=bar.update, window_stride_ms=window_stride_ms)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Benchmarks: `siteloc bench --help` for the options (writes metrics JSON + error-CDF PNG)."""
    from bench.core import main as bench_main

    raise SystemExit(bench_main(list(args)))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
def demo(host: str, port: int) -> None:
    """A ready demo: a site from bundled UJIIndoorLoc data, a trained wknn model, the server, a curl to try."""
    from app.demo import prepare_demo

    _setup_logging("WARNING")
    settings = get_settings()
    if settings.database_url is None and "data_dir" not in settings.model_fields_set:
        settings = settings.model_copy(update={"data_dir": Path("siteloc-demo")})
    info = prepare_demo(settings, base_url=f"http://{host}:{port}")
    click.echo(info)
    sys.stdout.flush()
    _run_server(settings, host, port, 1)


register_remote(main)

if __name__ == "__main__":
    main()
