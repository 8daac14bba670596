"""`siteloc` commands that talk to a running server over HTTP (app.client): sites, models, activate, finetune,
jobs list / watch. The server and key come from --url / --key or SITELOC_URL / SITELOC_KEY. A server error
prints its `detail` (no traceback) and exits 1."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_URL = "http://127.0.0.1:8000"


def remote_options(fn: F) -> F:
    """--url and --key (or SITELOC_URL / SITELOC_KEY)."""
    fn = click.option("--key", envvar="SITELOC_KEY", default=None, help="API key (or SITELOC_KEY)", show_envvar=True)(
        fn
    )
    fn = click.option(
        "--url", envvar="SITELOC_URL", default=None, help=f"server URL (or SITELOC_URL; default {DEFAULT_URL})"
    )(fn)
    return fn


@contextmanager
def client_errors() -> Iterator[None]:
    """A client error becomes a one-line message (the server's detail) and exit status 1."""
    from app.client import ApiError, ClientError

    try:
        yield
    except ApiError as exc:
        raise click.ClickException(f"server answered {exc}") from None
    except ClientError as exc:
        raise click.ClickException(str(exc.detail)) from None


def _client(url: str | None, key: str | None) -> Any:
    from app.client import Client

    if not key:
        raise click.UsageError("an API key is needed: --key or SITELOC_KEY")
    return Client(url or DEFAULT_URL, key)


def with_client(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Passes `client` (built from --url/--key) instead of url and key; maps client errors to messages."""

    @remote_options
    @functools.wraps(fn)
    def wrapper(url: str | None, key: str | None, **kwargs: Any) -> Any:
        with client_errors(), _client(url, key) as client:
            return fn(client=client, **kwargs)

    return wrapper


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    return "\n".join(lines)


def _num(value: Any, fmt: str = "{:.2f}") -> str:
    return fmt.format(value) if isinstance(value, int | float) else "-"


@click.command("sites")
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON")
@with_client
def sites_cmd(client: Any, as_json: bool) -> None:
    """The sites this key may see, with counts and active model."""
    sites = client.sites()
    if as_json:
        click.echo(json.dumps([s.model_dump(mode="json") for s in sites], indent=2))
        return
    rows = []
    for s in sites:
        c = s.counts
        active = f"{s.active_model.name} v{s.active_model.version}" if s.active_model else "-"
        rows.append(
            [s.id, s.name, *(str(getattr(c, k)) if c else "-" for k in ("fingerprints", "windows", "queries")), active]
        )
    click.echo(_table(rows, ["id", "name", "fingerprints", "windows", "queries", "active model"]))


@click.command("models")
@click.argument("site_id")
@click.option("--json", "as_json", is_flag=True, help="print the API's JSON")
@with_client
def models_cmd(client: Any, site_id: str, as_json: bool) -> None:
    """A site's model versions with their holdout metrics."""
    versions = client.models(site_id)
    if as_json:
        click.echo(json.dumps([v.model_dump(mode="json") for v in versions], indent=2))
        return
    rows = [
        [
            str(v.version),
            v.model,
            v.status,
            v.source,
            _num(v.metrics.get("mean_m")),
            _num(v.metrics.get("median_m")),
            _num(v.metrics.get("p95_m")),
            _num(v.metrics.get("floor_hit"), "{:.1%}"),
            v.created_at.strftime("%Y-%m-%d %H:%M"),
        ]
        for v in versions
    ]
    header = ["version", "model", "status", "source", "mean m", "median m", "p95 m", "floor hit", "created (UTC)"]
    click.echo(_table(rows, header))


@click.command("activate")
@click.argument("site_id")
@click.argument("version", type=int)
@with_client
def activate_cmd(client: Any, site_id: str, version: int) -> None:
    """Make VERSION the site's active model (promotion or rollback)."""
    mv = client.activate(site_id, version)
    click.echo(f"site {site_id}: version {mv.version} ({mv.model}) is {mv.status}")


def _parse_param(value: str) -> tuple[str, Any]:
    name, sep, raw = value.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{value!r}: expected NAME=VALUE")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


@click.command("finetune")
@click.argument("site_id")
@click.option("--model", default="wknn", show_default=True, help="wknn, dnn, cnnloc, itoloc, mtloc")
@click.option("--transfer-from", multiple=True, help="source site id (repeatable)")
@click.option("--strategy", default=None, help="scratch, frozen, finetune, msta, encoder")
@click.option("--train-fraction", type=float, default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--param", "params", multiple=True, help="model setting NAME=VALUE (VALUE read as JSON if it parses)")
@click.option("--watch/--no-watch", default=False, help="show the job's progress until it ends")
@with_client
def finetune_cmd(
    client: Any,
    site_id: str,
    model: str,
    transfer_from: tuple[str, ...],
    strategy: str | None,
    train_fraction: float | None,
    seed: int,
    params: tuple[str, ...],
    watch: bool,
) -> None:
    """Train a model for a site in the background; prints the job id (or, with --watch, follows it)."""
    body = {
        "model": model,
        "transfer_from": list(transfer_from) or None,
        "strategy": strategy,
        "train_fraction": train_fraction,
        "seed": seed,
        "params": dict(_parse_param(p) for p in params),
    }
    try:
        job_id = client.finetune(site_id, body)
    except ValueError as exc:  # the request did not pass the API's own schema
        raise click.UsageError(str(exc)) from None
    click.echo(f"job {job_id}")
    if watch:
        _watch(client, job_id, poll_s=0.5, timeout=None)


@click.group("jobs")
def jobs_group() -> None:
    """Background jobs (finetune, co-training)."""


@jobs_group.command("list")
@click.option("--site", "site_id", default=None, help="only this site's jobs")
@click.option("--limit", default=20, show_default=True, type=int)
@with_client
def jobs_list(client: Any, site_id: str | None, limit: int) -> None:
    """The newest jobs."""
    rows = [
        [
            j.id,
            j.kind,
            j.site_id or "-",
            j.state,
            f"{j.progress:.0%}",
            j.created_at.strftime("%Y-%m-%d %H:%M"),
            (j.error or j.message)[:60],
        ]
        for j in client.jobs(site_id=site_id, limit=limit)
    ]
    click.echo(_table(rows, ["id", "kind", "site", "state", "progress", "created (UTC)", "message"]))


@jobs_group.command("watch")
@click.argument("job_id")
@click.option("--poll", "poll_s", default=0.5, show_default=True, type=float, help="seconds between polls")
@click.option("--timeout", type=float, default=None, help="give up after this many seconds (exit 3)")
@with_client
def jobs_watch(client: Any, job_id: str, poll_s: float, timeout: float | None) -> None:
    """A progress bar until the job ends. Exit status: 0 succeeded, 1 failed, 3 still running at --timeout."""
    _watch(client, job_id, poll_s=poll_s, timeout=timeout)


def _watch(client: Any, job_id: str, *, poll_s: float, timeout: float | None) -> None:
    from tqdm import tqdm

    bar = tqdm(total=100, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% {postfix}", dynamic_ncols=True)

    def update(job: Any) -> None:
        bar.n = round(job.progress * 100, 1)
        bar.set_description(job.state)
        bar.set_postfix_str(job.message[:60])

    try:
        job = client.job_wait(
            job_id, timeout=timeout if timeout is not None else float("inf"), poll_s=poll_s, on_update=update
        )
    except TimeoutError as exc:
        bar.close()
        click.echo(str(exc), err=True)
        raise SystemExit(3) from None
    bar.close()
    if job.state == "succeeded":
        version = f", model version {job.model_version}" if job.model_version is not None else ""
        click.echo(f"job {job.id} succeeded{version}: {job.message}")
        return
    click.echo(f"job {job.id} failed: {job.error or job.message}", err=True)
    raise SystemExit(1)


def register(group: click.Group) -> None:
    for command in (sites_cmd, models_cmd, activate_cmd, finetune_cmd, jobs_group):
        group.add_command(command)
