"""Fault test in full mode, on its own PostgreSQL and Redis (never the machine's shared ones).

    python scripts/fault_test.py [--out docs/benchmarks/results/reliability/fault_test.json]

What it does (issue 19), with a light /locate load running throughout:
  1. starts PostgreSQL (initdb into a temporary folder, its own port) and `redis-server --port N`, migrates, and
     starts `siteloc serve`, a `siteloc worker` and `siteloc beat` (job sweep every few seconds);
  2. builds a site from the UJIIndoorLoc fixture and trains wknn;
  3. stops PostgreSQL for 20 s, then Redis for 20 s (the API is never restarted);
  4. checks: no 500 at any time, every /locate answered 200 is in the query log, answers are 200 again after
     each outage;
  5. starts a dnn finetune, kills the worker (its whole process group) with SIGKILL mid-job, starts a new worker,
     and waits until the job ends: succeeded after the sweeper requeued it (or failed with a message), with at
     most one model version for it.
Writes a JSON of the figures; exits 1 when a check fails. Needs initdb/pg_ctl and redis-server on PATH; as root,
PostgreSQL runs as the `postgres` user.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ADMIN_KEY = "fault-test-admin-key-0123456789"
OUTAGE_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} not ready within {timeout:g} s")


class Postgres:
    """A throwaway PostgreSQL cluster in a temporary folder (as the postgres user when run as root)."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.dir = tmp / "pg"
        self.port = port
        self.sudo = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.dir.mkdir()
        if self.sudo:
            shutil.chown(self.dir, "postgres", "postgres")
            os.chmod(tmp, 0o755)
        self._run("initdb", "-D", str(self.dir), "-U", "postgres", "-A", "trust", "--no-sync")
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.sudo, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} -c fsync=on"
        self._run("pg_ctl", "-D", str(self.dir), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir), "-m", "fast", "-w", "stop")


class Redis:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        wait_for(lambda: redis.Redis.from_url(self.url).ping(), 20, "redis")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


class Proc:
    """A siteloc subprocess in its own process group (so SIGKILL reaches its children too)."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from app.cli import main; main()", *args],
            env=env,
            cwd=ROOT,
            stdout=open(log, "ab"),  # noqa: SIM115 - lives as long as the process
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


class Load:
    """A light /locate load: `threads` clients, each one request every `period_s`, recording every answer."""

    def __init__(self, base: str, key: str, site_id: str, scans: list[list[dict[str, Any]]], threads: int = 4):
        self.base, self.key, self.site_id, self.scans = base, key, site_id, scans
        self.threads = threads
        self.period_s = 0.05
        self.stop = threading.Event()
        self.records: list[tuple[float, int, str | None, str]] = []  # (time, status, query_id, detail)
        self.lock = threading.Lock()
        self.workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def start(self) -> None:
        for w in self.workers:
            w.start()

    def finish(self) -> None:
        self.stop.set()
        for w in self.workers:
            w.join()

    def _run(self, i: int) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        n = 0
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self.stop.is_set():
                scan = self.scans[(i * 7919 + n) % len(self.scans)]
                n += 1
                try:
                    r = client.post("/locate", json={"site_id": self.site_id, "wifi": scan}, headers=headers)
                    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                    rec = (time.time(), r.status_code, body.get("query_id"), str(body.get("detail", ""))[:120])
                except httpx.HTTPError as exc:
                    rec = (time.time(), -1, None, type(exc).__name__)
                with self.lock:
                    self.records.append(rec)
                time.sleep(self.period_s)

    def between(self, t0: float, t1: float) -> dict[str, int]:
        with self.lock:
            return dict(collections.Counter(str(s) for t, s, _, _ in self.records if t0 <= t < t1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs/benchmarks/results/reliability/fault_test.json"))
    ap.add_argument("--outage-s", type=float, default=OUTAGE_S)
    ap.add_argument("--job-timeout-s", type=float, default=600.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="siteloc-fault-"))
    pg, rd = Postgres(tmp, free_port()), Redis(free_port())
    procs: list[Proc] = []
    results: dict[str, Any] = {"outage_s": args.outage_s, "checks": {}}
    failures: list[str] = []
    try:
        pg.start()
        rd.start()
        api_port = free_port()
        env = {
            **os.environ,
            "SITELOC_DATABASE_URL": pg.url,
            "SITELOC_REDIS_URL": rd.url,
            "SITELOC_BOOTSTRAP_ADMIN_KEY": ADMIN_KEY,
            "SITELOC_DEVICE": "cpu",
            "SITELOC_KEY_CACHE_SECONDS": "1",
            "SITELOC_JOB_HEARTBEAT_SECONDS": "3",
            "SITELOC_JOB_STALE_SECONDS": "15",
            "SITELOC_JOB_SWEEP_SECONDS": "5",
            "SITELOC_DATA_DIR": str(tmp / "data"),
        }
        (tmp / "data").mkdir()
        from app.migrate import upgrade

        upgrade(pg.url)
        procs.append(Proc(["serve", "--host", "127.0.0.1", "--port", str(api_port)], env, tmp / "api.log"))
        worker = Proc(["worker", "--concurrency", "1"], env, tmp / "worker.log")
        procs.append(worker)
        procs.append(Proc(["beat"], env, tmp / "beat.log"))
        base = f"http://127.0.0.1:{api_port}"
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        client = httpx.Client(base_url=base, timeout=60)
        wait_for(lambda: client.get("/readyz").status_code == 200, 120, "the API")
        wait_for(lambda: "ready." in (tmp / "worker.log").read_text(errors="replace"), 120, "the worker")

        from ml.data.jsonl import fingerprint_to_json
        from ml.data.ujiindoorloc import read_ujiindoorloc

        fixtures = ROOT / "tests/fixtures"
        survey = [fingerprint_to_json(fp) for fp in read_ujiindoorloc(fixtures / "uji_train_small.csv") if fp.wifi]
        scans = [
            fingerprint_to_json(fp)["wifi"]
            for fp in read_ujiindoorloc(fixtures / "uji_validation_small.csv")
            if fp.wifi
        ]
        site_id = client.post("/sites", json={"name": "fault"}, headers=admin).json()["id"]
        r = client.post(f"/sites/{site_id}/surveys", json={"fingerprints": survey}, headers=admin)
        assert r.status_code == 201, r.text
        job_id = client.post(f"/sites/{site_id}/finetune", json={"model": "wknn"}, headers=admin).json()["job_id"]
        job = wait_job(client, admin, job_id, 600)
        assert job["state"] == "succeeded", job
        key = client.post("/keys", json={"role": "app", "name": "load"}, headers=admin).json()["key"]

        results["huge_locate"] = huge_locate(client, key, site_id)
        first, streamed = results["huge_locate"]["statuses"]
        check(failures, results, "huge_locate_is_413", first == 413 and streamed in (413, "connection closed"))

        load = Load(base, key, site_id, scans)
        load.start()
        phases: dict[str, tuple[float, float]] = {}
        t = time.time()
        time.sleep(5)
        phases["before"] = (t, time.time())
        t = time.time()
        pg.stop()
        time.sleep(args.outage_s)
        phases["postgres_down"] = (t, time.time())
        pg.start()
        t = time.time()
        recovered_pg = wait_ok(load, t)
        time.sleep(5)
        phases["after_postgres"] = (t, time.time())
        t = time.time()
        rd.stop()
        time.sleep(args.outage_s)
        phases["redis_down"] = (t, time.time())
        rd.start()
        t = time.time()
        recovered_redis = wait_ok(load, t)
        time.sleep(5)
        phases["after_redis"] = (t, time.time())
        load.finish()
        results["load"] = {name: load.between(*span) for name, span in phases.items()}
        results["recovery_s"] = {"postgres": recovered_pg, "redis": recovered_redis}
        statuses = collections.Counter(s for _, s, _, _ in load.records)
        results["statuses"] = {str(k): v for k, v in sorted(statuses.items())}
        answered = [q for _, s, q, _ in load.records if s == 200]
        details_503 = collections.Counter(d for _, s, _, d in load.records if s == 503)
        results["details_503"] = dict(details_503.most_common(5))
        stored = stored_query_ids(pg.url, answered)
        results["answered_200"] = len(answered)
        results["answered_200_stored"] = stored
        check(failures, results, "no_500", statuses.get(500, 0) == 0)
        check(failures, results, "no_connection_errors", statuses.get(-1, 0) == 0)
        check(failures, results, "every_200_stored", stored == len(answered))
        check(failures, results, "recovered_after_postgres", recovered_pg is not None)
        check(failures, results, "recovered_after_redis", recovered_redis is not None)
        check(failures, results, "503_during_postgres_outage", "503" in results["load"]["postgres_down"])
        print(json.dumps({k: results[k] for k in ("load", "recovery_s", "checks")}), file=sys.stderr, flush=True)

        # finetune accepted while Redis is down: 503 and no job left (or, if it got through, it runs)
        rd.stop()
        r = client.post(f"/sites/{site_id}/finetune", json={"model": "wknn"}, headers=admin)
        results["finetune_with_redis_down"] = {"status": r.status_code, "retry_after": r.headers.get("Retry-After")}
        rd.start()
        check(failures, results, "finetune_redis_down_is_503", r.status_code == 503)

        # kill -9 of the worker mid-job
        results["kill9"] = kill_worker_mid_job(client, admin, site_id, worker, procs, env, tmp, pg.url, args)
        check(failures, results, "worker_killed_mid_job", results["kill9"]["killed"])
        check(failures, results, "killed_job_ended", results["kill9"]["state"] in ("succeeded", "failed"))
        check(failures, results, "killed_job_at_most_one_version", results["kill9"]["versions_for_job"] <= 1)
        if results["kill9"]["state"] == "failed":
            check(failures, results, "killed_job_failure_has_message", bool(results["kill9"].get("error")))
    finally:
        for p in reversed(procs):
            p.kill()
        rd.stop()
        with contextlib.suppress(Exception):
            pg.stop()
        results["logs"] = str(tmp)
    results["ok"] = not failures
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    if failures:
        print(f"FAILED: {', '.join(failures)} (logs in {tmp})", file=sys.stderr)
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def huge_locate(client: httpx.Client, key: str, site_id: str) -> dict[str, Any]:
    """A 12.7 MB /locate (400,000 APs), with Content-Length and streamed without it: refused with 413 at once."""
    wifi = ",".join(f'{{"bssid":"ap{i}","rssi":-50}}' for i in range(400_000))
    body = f'{{"site_id":"{site_id}","wifi":[{wifi}]}}'.encode()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    out: dict[str, Any] = {"bytes": len(body), "statuses": [], "seconds": []}

    def chunks() -> Any:
        for k in range(0, len(body), 65536):
            yield body[k : k + 65536]

    for content in (body, chunks()):
        t0 = time.perf_counter()
        try:
            r = client.post("/locate", content=content, headers=headers)
            status = r.status_code
        except httpx.HTTPError as exc:  # the server may answer 413 and close before the whole stream is sent
            status = "connection closed"
            out.setdefault("errors", []).append(type(exc).__name__)
        out["statuses"].append(status)
        out["seconds"].append(round(time.perf_counter() - t0, 4))
    return out


def check(failures: list[str], results: dict[str, Any], name: str, ok: bool) -> None:
    results["checks"][name] = ok
    if not ok:
        failures.append(name)


def wait_ok(load: Load, since: float, timeout: float = 60.0) -> float | None:
    """Seconds from `since` until the load got a 200 again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with load.lock:
            first = next((t for t, s, _, _ in load.records if t >= since and s == 200), None)
        if first is not None:
            return round(first - since, 2)
        time.sleep(0.2)
    return None


def wait_job(client: httpx.Client, headers: dict[str, str], job_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        r = client.get(f"/jobs/{job_id}", headers=headers)
        if r.status_code == 200:
            job = r.json()
            if job["state"] in ("succeeded", "failed"):
                return job
        time.sleep(0.5)
    return job


def stored_query_ids(url: str, ids: list[str | None]) -> int:
    from sqlalchemy import create_engine, select

    from app.models import Query

    engine = create_engine(url)
    want = [i for i in ids if i]
    found = 0
    with engine.connect() as c:
        for k in range(0, len(want), 1000):
            found += len(c.execute(select(Query.id).where(Query.id.in_(want[k : k + 1000]))).all())
    engine.dispose()
    return found


def kill_worker_mid_job(
    client: httpx.Client,
    admin: dict[str, str],
    site_id: str,
    worker: Proc,
    procs: list[Proc],
    env: dict[str, str],
    tmp: Path,
    url: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    # Long enough to be caught mid-training on a quiet machine too (no early stop, no step cap).
    body = {"model": "dnn", "params": {"epochs": 3000, "patience": 3000, "max_steps": 1000000}}
    job_id = client.post(f"/sites/{site_id}/finetune", json=body, headers=admin).json()["job_id"]
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}", headers=admin).json()
        if job["state"] == "running" and job["progress"] > 0.05:
            break
        if job["state"] in ("succeeded", "failed"):
            return {
                "job_id": job_id,
                "state": job["state"],
                "killed": False,
                "note": "ended before it could be killed",
                "versions_for_job": _versions_for_job(url, job_id),
            }
        time.sleep(0.2)
    killed_at = time.time()
    progress_at_kill = job["progress"]
    worker.kill(signal.SIGKILL)
    procs.remove(worker)
    procs.append(Proc(["worker", "--concurrency", "1"], env, tmp / "worker2.log"))
    job = wait_job(client, admin, job_id, args.job_timeout_s)
    return {
        "job_id": job_id,
        "killed": True,
        "progress_at_kill": progress_at_kill,
        "state": job.get("state"),
        "error": job.get("error"),
        "model_version": job.get("model_version"),
        "seconds_from_kill_to_end": round(time.time() - killed_at, 1),
        "versions_for_job": _versions_for_job(url, job_id),
    }


def _versions_for_job(url: str, job_id: str) -> int:
    from sqlalchemy import create_engine, func, select

    from app.models import ModelVersion

    engine = create_engine(url)
    with engine.connect() as c:
        versions = c.execute(
            select(func.count()).select_from(ModelVersion).where(ModelVersion.job_id == job_id)
        ).scalar()
    engine.dispose()
    return int(versions or 0)


if __name__ == "__main__":
    raise SystemExit(main())
