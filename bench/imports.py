"""Import throughput and server peak memory: survey archives uploaded through the API.

    python -m bench.imports [--data-dir ../shared/data] [--archive ilc2020/site1/F1.tar.xz ...]
        [--all] [--window-stride-ms 500] [--out bench-out]

Starts `siteloc serve` (embedded mode, a fresh SQLite file; set SITELOC_DATABASE_URL/SITELOC_REDIS_URL for
full mode), creates one site per archive, uploads it as multipart (format ilc2020) and reports wall time,
scans and windows per second, MB/s of archive, and the server's peak RSS (VmHWM) after each upload.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

from app.client import Client
from bench.serve import RssSampler, Server


def default_data_dir() -> Path:
    for cand in (Path.cwd() / ".." / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"):
        if cand.is_dir():
            return cand.resolve()
    return Path("../shared/data")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=default_data_dir())
    ap.add_argument("--archive", action="append", help="path under --data-dir (repeatable)")
    ap.add_argument("--all", action="store_true", help="every ilc2020 floor archive")
    ap.add_argument("--window-stride-ms", type=int, default=500)
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--name", default="import", help="output file stem")
    args = ap.parse_args(argv)
    if args.all:
        archives = sorted((args.data_dir / "ilc2020").glob("*/*.tar.xz"))
    else:
        archives = [args.data_dir / a for a in (args.archive or ["ilc2020/site1/F1.tar.xz"])]
    missing = [str(a) for a in archives if not a.is_file()]
    if missing or not archives:
        print(f"archives not found: {missing or args.data_dir}", file=sys.stderr)
        return 2
    server = Server()
    rows = []
    try:
        idle_rss = server.rss_mib()[0]
        for archive in archives:
            rows.append(_upload(server, archive, args.window_stride_ms))
            print(json.dumps(rows[-1]))
    finally:
        server.stop()
    result = {
        "command": "python -m bench.imports " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {_cpus()} CPUs",
        "server_idle_rss_mib": round(idle_rss, 1),
        "uploads": rows,
        "server_peak_rss_mib": max(r["server_peak_rss_mib"] for r in rows),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{args.name}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _upload(server: Server, archive: Path, stride: int) -> dict[str, Any]:
    name = f"{archive.parent.name}/{archive.name}"
    with Client(server.base, server.admin_key, timeout=3600) as c:
        site = c.create_site(name).id
        t0 = time.perf_counter()
        with RssSampler(server) as rss:
            out = c.upload_survey_file(site, archive, fmt="ilc2020", window_stride_ms=stride).model_dump()
        wall = time.perf_counter() - t0
    size_mb = archive.stat().st_size / 1e6
    return {
        "archive": name,
        "archive_mb": round(size_mb, 2),
        "fingerprints": out["fingerprints"],
        "windows": out["windows"],
        "paths": out["paths"],
        "window_stride_ms": stride,
        "wall_s": round(wall, 2),
        "fingerprints_per_s": round(out["fingerprints"] / wall, 1),
        "windows_per_s": round(out["windows"] / wall, 1),
        "archive_mb_per_s": round(size_mb / wall, 2),
        "server_peak_rss_mib": round(rss.peak, 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
