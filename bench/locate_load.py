"""/locate under load: throughput and latency of a real server, every answered query stored, against the
framework ceiling measured in the same run.

    python -m bench.locate_load [--data-dir ../shared/data] [--loads wknn,dnn,itoloc,mtloc,detect]
        [--duration 20] [--connections 32] [--workers 2] [--database-url URL --redis-url URL] [--out DIR]

Starts `siteloc serve --workers N` (embedded mode in a fresh SQLite file unless --database-url/--redis-url name
PostgreSQL and Redis; then also one `siteloc worker`), builds the sites through the public API and drives
POST /locate with wrk (Debian package `wrk`), one load after the other:

- `wknn`: all 19,937 UJIIndoorLoc trainingData scans as one site (the CSV upload), the default wknn fine-tune;
  queries cycle through the 1,111 validationData scans.
- `dnn`, `itoloc`: UJIIndoorLoc building 0 (5,249 training scans) with small but real trainings (TRAINING below);
  queries: building 0's validation scans.
- `mtloc`: ILC 2020 site1/F1 (the shared archive; sensor windows every second), a small mtloc; queries: the
  archive's windows (WiFi + sensor window each).
- `detect`: UJIIndoorLoc buildings 0, 1 and 2 as three wknn sites; queries without `site_id`.
- `session`: the `wknn` load's site and scans as tracking-session queries (`session_id`, `timestamp`): 64 sessions
  per wrk run, each query to the next session in turn, timestamps 1 ms apart (the session path's cost; its
  answers are not scored here, see bench.tracking).

For each load: requests/s, latency percentiles, non-2xx, the queries the server stored during the load (every
200 must be stored), the server's RSS (all processes), and the latency at 1 connection. Then the framework
ceiling (`bench.ceiling_app`: bare FastAPI + pydantic validating the same bodies, same process count, same wrk
settings) on each load's bodies, and the ratio.
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

from bench.core import git_commit
from bench.imports import default_data_dir
from bench.serve import Server
from ml.data.ilc2020 import read_ilc_windows
from ml.data.jsonl import fingerprint_to_json
from ml.data.ujiindoorloc import read_ujiindoorloc

LOADS = ("wknn", "session", "dnn", "itoloc", "mtloc", "detect")
# Small, real trainings (a few epochs on a CPU); the serving cost depends on the network's size, not on how
# long it was trained. dnn: the default network (256-128-128), 400 steps; itoloc: 32 strongest APs, width 8.
TRAINING: dict[str, dict[str, Any]] = {
    "wknn": {},
    "dnn": {"epochs": 4, "max_steps": 400, "patience": 4},
    "itoloc": {"min_steps": 0, "n_aps": 32, "width": 8, "epochs": 3, "batch_size": 64},
    "mtloc": {"n_aps": 64, "wifi_hidden": 16, "imu_hidden": 8, "mag_hidden": 8, "fusion_hidden": 16, "epochs": 5},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=default_data_dir())
    ap.add_argument("--loads", default="wknn", help=f"comma-separated, from {','.join(LOADS)}")
    ap.add_argument("--duration", type=int, default=20, help="seconds of load per run")
    ap.add_argument("--single-duration", type=int, default=5, help="seconds of the 1-connection latency run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--workers", type=int, default=2, help="API processes (and ceiling processes)")
    ap.add_argument("--no-ceiling", action="store_true", help="skip the framework ceiling runs")
    ap.add_argument("--database-url")
    ap.add_argument("--redis-url")
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--name", default=None, help="output file stem (default locate_load_<mode>)")
    args = ap.parse_args(argv)
    commit = git_commit()  # the code that runs, recorded before the long run
    loads = [x.strip() for x in args.loads.split(",") if x.strip()]
    if unknown := set(loads) - set(LOADS):
        print(f"unknown loads {sorted(unknown)}; choose from {', '.join(LOADS)}", file=sys.stderr)
        return 2
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    zpath = args.data_dir / "ujiindoorloc.zip"
    ilc = args.data_dir / "ilc2020" / "site1" / "F1.tar.xz"
    if not zpath.is_file() or ("mtloc" in loads and not ilc.is_file()):
        print(f"{zpath} (and for mtloc {ilc}) not found (--data-dir)", file=sys.stderr)
        return 2
    full = bool(args.database_url and args.redis_url)
    env = {"SITELOC_DATABASE_URL": args.database_url, "SITELOC_REDIS_URL": args.redis_url} if full else {}
    if full:  # `siteloc serve` migrates only its embedded SQLite file; a full stack runs `siteloc db upgrade` first
        from app.migrate import upgrade

        upgrade(args.database_url)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="siteloc-load-") as tmp_name:
        tmp = Path(tmp_name)
        uji = _read_uji(zpath, tmp)
        worker = _start_worker(env, tmp) if full else None
        server = None
        try:  # the worker is stopped even when the server fails to start
            server = Server(env=env, workers=args.workers)
            bodies: dict[str, list[str]] = {}
            counted: dict[str, list[str]] = {}
            for load in loads:
                t0 = time.perf_counter()
                if load == "session" and "wknn" in bodies:  # the same site and scans
                    bodies[load], counted[load] = bodies["wknn"], counted["wknn"]
                    continue
                bodies[load], counted[load] = _setup_load(server, load, uji, zpath, ilc, tmp)
                print(f"{load}: sites ready in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
            _wait_all_serving(server, bodies)
            key = _app_key(server)
            for load in loads:
                results[load] = _measure(server, key, load, bodies[load], args, tmp)
                print(f"{load}: {results[load]['requests_per_s']} requests/s", file=sys.stderr)
        finally:
            if server is not None:
                server.stop()
            if worker is not None:
                worker.terminate()
                worker.wait(timeout=30)
        if not args.no_ceiling:
            ceiling = Server(workers=args.workers, ceiling=True)
            try:
                for load in loads:
                    cpu0 = ceiling.tree_cpu_s()
                    session = load == "session"
                    wrk = _run_wrk(
                        ceiling, key, bodies[load], args.connections, args.duration, args.threads, tmp, session
                    )
                    cpu = ceiling.tree_cpu_s() - cpu0
                    results[load]["ceiling"] = {k: wrk[k] for k in ("requests_per_s", "latency_ms", "non_2xx")}
                    results[load]["ceiling"]["server_cpu_ms_per_request"] = round(
                        1000 * cpu / max(wrk["requests"], 1), 3
                    )
                    results[load]["ceiling"]["requests_per_cpu_second"] = round(wrk["requests"] / max(cpu, 1e-9), 1)
                    results[load]["ceiling"]["server_rss_mib"] = round(ceiling.tree_rss_mib(), 1)
                    results[load]["ratio_to_ceiling"] = round(
                        results[load]["requests_per_s"] / wrk["requests_per_s"], 3
                    )
            finally:
                ceiling.stop()
    result = {
        "command": "python -m bench.locate_load " + " ".join(argv if argv is not None else sys.argv[1:]),
        "mode": "full" if full else "embedded",
        "git_commit": commit,
        "machine": f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPUs (shared by server, wrk, database "
        "and, on this host, other users)",
        "workers": args.workers,
        "connections": args.connections,
        "duration_s": args.duration,
        "training": {k: TRAINING[k if k not in ("detect", "session") else "wknn"] for k in loads},
        "loads": results,
        "every_200_stored": all(r["every_200_stored"] for r in results.values()),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{args.name or 'locate_load_' + result['mode']}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items()}, indent=2))
    print(f"wrote {out}")
    return 0 if result["every_200_stored"] else 1


# ---------------------------------------------------------------- data and sites


def _read_uji(zpath: Path, tmp: Path) -> dict[str, list[dict[str, Any]]]:
    out = {}
    with zipfile.ZipFile(zpath) as zf:
        for split, member in (("train", "trainingData.csv"), ("validation", "validationData.csv")):
            path = tmp / member
            path.write_bytes(zf.read(f"UJIndoorLoc/{member}"))
            out[split] = [fingerprint_to_json(fp) for fp in read_ujiindoorloc(path) if fp.wifi]
    return out


def _setup_load(
    server: Server, load: str, uji: dict[str, list[dict[str, Any]]], zpath: Path, ilc: Path, tmp: Path
) -> tuple[list[str], list[str]]:
    """(request bodies, sites whose query counts prove storage) for one load."""
    if load in ("wknn", "session"):
        site = _site(server, "UJIIndoorLoc (load test)")
        with zipfile.ZipFile(zpath) as zf:
            _upload(server, site, "trainingData.csv", zf.read("UJIndoorLoc/trainingData.csv"), "ujiindoorloc")
        _train(server, site, "wknn")
        return [_body(q, site) for q in uji["validation"]], [site]
    if load in ("dnn", "itoloc"):
        site = _site(server, f"UJIIndoorLoc building 0 ({load})")
        _upload_jsonl(server, site, [f for f in uji["train"] if f.get("building") == "0"])
        _train(server, site, load)
        return [_body(q, site) for q in uji["validation"] if q.get("building") == "0"], [site]
    if load == "mtloc":
        site = _site(server, "ILC 2020 site1 F1 (mtloc)")
        with httpx.Client(base_url=server.base, headers=server.headers, timeout=1800) as c:
            with open(ilc, "rb") as fh:
                r = c.post(
                    f"/sites/{site}/surveys",
                    files={"file": (ilc.name, fh)},
                    data={"format": "ilc2020", "window_stride_ms": "1000"},
                )
            r.raise_for_status()
        _train(server, site, "mtloc")
        windows = [fingerprint_to_json(fp) for fp in read_ilc_windows(ilc, stride_ms=5000)]
        return [_body(w, site, sensors=True) for w in windows[:2000]], [site]
    # detect: three sites, queries without site_id
    sites = []
    for b in ("0", "1", "2"):
        site = _site(server, f"UJIIndoorLoc building {b} (detect)")
        _upload_jsonl(server, site, [f for f in uji["train"] if f.get("building") == b])
        sites.append(site)
    for site in sites:
        _train(server, site, "wknn")
    return [_body(q, None) for q in uji["validation"]], sites


def _body(q: dict[str, Any], site: str | None, sensors: bool = False) -> str:
    body: dict[str, Any] = {"wifi": [{"bssid": w["bssid"], "rssi": w["rssi"]} for w in q["wifi"]]}
    if site is not None:
        body["site_id"] = site
    if sensors and "sensors" in q:
        body["sensors"] = q["sensors"]
    return json.dumps(body, separators=(",", ":"))


def _site(server: Server, name: str) -> str:
    r = httpx.post(f"{server.base}/sites", json={"name": name}, headers=server.headers, timeout=60)
    r.raise_for_status()
    return str(r.json()["id"])


def _upload(server: Server, site: str, filename: str, data: bytes, fmt: str) -> None:
    with httpx.Client(base_url=server.base, headers=server.headers, timeout=1800) as c:
        r = c.post(f"/sites/{site}/surveys", files={"file": (filename, data)}, data={"format": fmt})
    r.raise_for_status()


def _upload_jsonl(server: Server, site: str, fps: list[dict[str, Any]]) -> None:
    _upload(server, site, "survey.jsonl", "\n".join(json.dumps(f) for f in fps).encode(), "jsonl")


def _train(server: Server, site: str, model: str) -> None:
    with httpx.Client(base_url=server.base, headers=server.headers, timeout=600) as c:
        r = c.post(f"/sites/{site}/finetune", json={"model": model, "params": TRAINING[model], "seed": 0})
        r.raise_for_status()
        job = r.json()["job_id"]
        state = "queued"
        while state not in ("succeeded", "failed"):
            time.sleep(1.0)
            state = c.get(f"/jobs/{job}").json()["state"]
        if state != "succeeded":
            raise RuntimeError(c.get(f"/jobs/{job}").text)


def _wait_all_serving(server: Server, bodies: dict[str, list[str]]) -> None:
    """Every process answers every load (each API process loads models itself; they pick up activations
    within the model refresh interval)."""
    headers = {**server.headers, "Content-Type": "application/json"}
    with httpx.Client(base_url=server.base, headers=headers, timeout=60) as c:
        for bs in bodies.values():
            ok = 0
            for _ in range(600):
                ok = ok + 1 if c.post("/locate", content=bs[0]).status_code == 200 else 0
                if ok >= 20:  # consecutive 200s: every process (connections are spread over them) serves it
                    break
                time.sleep(0.05)


def _app_key(server: Server) -> str:
    """An `app` key for the load, as phones use: its role's rate limit (SITELOC_RATE_LIMIT_APP_PER_S, 20,000/s by
    default) is the one /locate traffic meets; the admin key's (1,000/s) would cap the load below the goal."""
    r = httpx.post(f"{server.base}/keys", json={"role": "app", "name": "locate load"}, headers=server.headers)
    r.raise_for_status()
    return str(r.json()["key"])


def _start_worker(env: dict[str, str], tmp: Path) -> subprocess.Popen[bytes]:
    log = open(tmp / "worker.log", "wb")  # noqa: SIM115 - lives as long as the worker
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "worker"], env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
    )


def _queries(server: Server) -> int:
    """Queries stored at every site of the server (a detected query is stored at whichever site it matched)."""
    r = httpx.get(f"{server.base}/sites", headers=server.headers, timeout=60)
    r.raise_for_status()
    return sum(int(site["counts"]["queries"]) for site in r.json())


# ---------------------------------------------------------------- measuring


def _measure(
    server: Server, key: str, load: str, bodies: list[str], args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    before = _queries(server)
    sessions = load == "session"
    single = _run_wrk(server, key, bodies, 1, args.single_duration, 1, tmp, sessions)
    load_before = os.getloadavg()[0]
    cpu0 = server.tree_cpu_s()
    wrk = _run_wrk(server, key, bodies, args.connections, args.duration, args.threads, tmp, sessions)
    cpu = server.tree_cpu_s() - cpu0
    rss = server.tree_rss_mib()
    time.sleep(1.0)
    stored = _queries(server) - before
    answered = single["ok_responses"] + wrk["ok_responses"]
    return {
        "bodies": len(bodies),
        "requests_per_s": wrk["requests_per_s"],
        "latency_ms": wrk["latency_ms"],
        "requests": wrk["requests"],
        "non_2xx": wrk["non_2xx"],
        "socket_errors": wrk["socket_errors"],
        "answered_200": answered,
        "stored": stored,
        "every_200_stored": stored >= answered,
        "server_rss_mib": round(rss, 1),
        "server_cpu_ms_per_request": round(1000 * cpu / max(wrk["requests"], 1), 3),
        "requests_per_cpu_second": round(wrk["requests"] / max(cpu, 1e-9), 1),
        "one_connection": {"requests_per_s": single["requests_per_s"], "latency_ms": single["latency_ms"]},
        "load_average_1m_before": round(load_before, 2),
        "wrk_output": wrk["wrk_output"],
    }


_LUA = """
local bodies = {%s}
local sessions = %s
local run = tostring(os.time()) .. "-" .. tostring(math.random(1000000))
local t0 = os.time() * 1000
local i, n = 0, 0
request = function()
  i = i %% #bodies + 1
  n = n + 1
  local body = bodies[i]
  if sessions then  -- 64 sessions of this run in turn; each one's timestamps increase
    body = string.sub(body, 1, -2) .. ',"session_id":"load-' .. run .. '-' .. (n %% 64) .. '","timestamp":'
           .. string.format("%%d", t0 + n) .. '}'
  end
  return wrk.format("POST", "/locate", {["Content-Type"] = "application/json", ["Authorization"] = "Bearer %s"},
                    body)
end
"""


def _run_wrk(
    server: Server,
    key: str,
    bodies: list[str],
    connections: int,
    duration: int,
    threads: int,
    tmp: Path,
    sessions: bool = False,
) -> dict[str, Any]:
    script = tmp / "locate.lua"
    lua_bodies = ",\n".join("[==[" + b + "]==]" for b in bodies)
    script.write_text(_LUA % (lua_bodies, "true" if sessions else "false", key))
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--latency", "-s", str(script)]
    out = subprocess.run([*cmd, f"{server.base}/locate"], capture_output=True, text=True, check=True).stdout
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
