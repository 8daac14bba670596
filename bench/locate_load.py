"""/locate under load: throughput and latency of a real server, every answered query stored.

    python -m bench.locate_load [--data-dir ../shared/data] [--duration 20] [--connections 32]
        [--workers 1] [--database-url URL --redis-url URL] [--out bench-out]

Starts `siteloc serve` (embedded mode in a fresh SQLite file unless --database-url/--redis-url name PostgreSQL and
Redis; then --workers uvicorn processes and one `siteloc worker`), surveys a site with all 19,937 UJIIndoorLoc
trainingData scans (uploaded as the CSV), trains wknn, then drives POST /locate with wrk (Debian package `wrk`)
cycling through the 1,111 validationData scans. Reports requests/s, latency percentiles, non-2xx responses, the
server's query count before/after (every 200 must be stored) and server RSS. Also sequential single-query latency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

from bench.imports import default_data_dir
from bench.serve import Server
from ml.data.jsonl import fingerprint_to_json
from ml.data.ujiindoorloc import read_ujiindoorloc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=default_data_dir())
    ap.add_argument("--duration", type=int, default=20, help="seconds of load")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--workers", type=int, default=1, help="uvicorn processes (full mode only)")
    ap.add_argument("--database-url")
    ap.add_argument("--redis-url")
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--name", default=None, help="output file stem (default locate_load_<mode>)")
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    zpath = args.data_dir / "ujiindoorloc.zip"
    if not zpath.is_file():
        print(f"{zpath} not found (--data-dir)", file=sys.stderr)
        return 2
    full = bool(args.database_url and args.redis_url)
    env = {"SITELOC_DATABASE_URL": args.database_url, "SITELOC_REDIS_URL": args.redis_url} if full else {}
    if full:  # `siteloc serve` migrates only its embedded SQLite file; a full stack runs `siteloc db upgrade` first
        from app.migrate import upgrade

        upgrade(args.database_url)
    with tempfile.TemporaryDirectory(prefix="siteloc-load-") as tmp:
        train_csv, queries = _prepare_data(zpath, Path(tmp))
        worker = _start_worker(env, Path(tmp)) if full else None
        server = None
        try:  # the worker is stopped even when the server fails to start
            server = Server(env=env, workers=args.workers if full else 1)
            site = _setup_site(server, train_csv)
            bodies = [json.dumps({"site_id": site, "wifi": q["wifi"]}) for q in queries]
            sequential = _sequential_latency(server, bodies[:300])
            before = _queries(server, site)
            load_before = os.getloadavg()[0]
            wrk = _run_wrk(server, bodies, args, Path(tmp))
            time.sleep(1.0)
            after = _queries(server, site)
            rss = server.tree_rss_mib()
        finally:
            if server is not None:
                server.stop()
            if worker is not None:
                worker.terminate()
                worker.wait(timeout=30)
    stored = after - before
    result = {
        "command": "python -m bench.locate_load " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mode": "full" if full else "embedded",
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs (shared by server, wrk and database)",
        "site_fingerprints": 19937,
        "workers": args.workers if full else 1,
        "connections": args.connections,
        "duration_s": args.duration,
        "sequential_latency_ms": sequential,
        **wrk,
        "queries_stored_during_load": stored,
        "every_200_stored": stored >= wrk["ok_responses"],
        "server_rss_mib": round(rss, 1),
        "load_average_1m": round(load_before, 2),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{args.name or 'locate_load_' + result['mode']}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0 if result["every_200_stored"] else 1


def _prepare_data(zpath: Path, tmp: Path) -> tuple[Path, list[dict[str, Any]]]:
    with zipfile.ZipFile(zpath) as zf:
        train = tmp / "trainingData.csv"
        train.write_bytes(zf.read("UJIndoorLoc/trainingData.csv"))
        val = tmp / "validationData.csv"
        val.write_bytes(zf.read("UJIndoorLoc/validationData.csv"))
    queries = [fingerprint_to_json(fp) for fp in read_ujiindoorloc(val) if fp.wifi]
    return train, queries


def _start_worker(env: dict[str, str], tmp: Path) -> subprocess.Popen[bytes]:
    log = open(tmp / "worker.log", "wb")  # noqa: SIM115 - lives as long as the worker
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
    )


def _setup_site(server: Server, train_csv: Path) -> str:
    with httpx.Client(base_url=server.base, headers=server.headers, timeout=600) as c:
        site = c.post("/sites", json={"name": "UJIIndoorLoc (load test)"}).json()["id"]
        with open(train_csv, "rb") as fh:
            r = c.post(
                f"/sites/{site}/surveys", files={"file": ("trainingData.csv", fh)}, data={"format": "ujiindoorloc"}
            )
        r.raise_for_status()
        job = c.post(f"/sites/{site}/finetune", json={"model": "wknn"}).json()["job_id"]
        state = "queued"
        while state not in ("succeeded", "failed"):
            time.sleep(0.5)
            state = c.get(f"/jobs/{job}").json()["state"]
        if state != "succeeded":
            raise RuntimeError(c.get(f"/jobs/{job}").text)
        # wait until this process serves the model
        for _ in range(100):
            if c.get(f"/sites/{site}").json().get("active_model"):
                break
            time.sleep(0.2)
    return str(site)


def _queries(server: Server, site: str) -> int:
    return int(httpx.get(f"{server.base}/sites/{site}", headers=server.headers).json()["counts"]["queries"])


def _sequential_latency(server: Server, bodies: list[str]) -> dict[str, float]:
    times = []
    headers = {**server.headers, "Content-Type": "application/json"}
    with httpx.Client(base_url=server.base, headers=headers) as c:
        for b in bodies[:20]:  # warm-up
            c.post("/locate", content=b)
        for b in bodies:
            t0 = time.perf_counter()
            r = c.post("/locate", content=b)
            times.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
    times.sort()
    return {p: round(times[int(q * (len(times) - 1))], 2) for p, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}


_LUA = """
local bodies = {%s}
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "/locate", {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %s"},
                    bodies[i])
end
"""


def _run_wrk(server: Server, bodies: list[str], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    script = tmp / "locate.lua"
    lua_bodies = ",\n".join("[==[" + b + "]==]" for b in bodies)
    script.write_text(_LUA % (lua_bodies, server.admin_key))
    cmd = [
        "wrk",
        "-t",
        str(args.threads),
        "-c",
        str(args.connections),
        "-d",
        f"{args.duration}s",
        "--latency",
        "-s",
        str(script),
        f"{server.base}/locate",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return _parse_wrk(out)


def _parse_wrk(out: str) -> dict[str, Any]:
    def ms(v: str) -> float:
        num, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()  # type: ignore[union-attr]
        return float(num) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    dist = {f"p{p}": ms(v) for p, v in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M)}
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    bad = int(non2xx.group(1)) if non2xx else 0
    return {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "latency_ms": dist,
        "requests": total,
        "ok_responses": total - bad,
        "non_2xx": bad,
        "socket_errors": errors.group(1) if errors else None,
        "wrk_output": out,
    }


if __name__ == "__main__":
    raise SystemExit(main())
