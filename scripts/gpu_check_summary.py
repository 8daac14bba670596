"""Fold what `scripts/gpu_check.sh` has produced so far into `<out>/summary.json` and `<out>/raw.tar.gz`.

    python scripts/gpu_check_summary.py RAW_DIR OUT_DIR

Called after every step, so a run stopped by its time limit still leaves a summary of the steps that ended. The
summary holds each step's status (ok, failed, timeout, skipped), the machine facts, the headline of every benchmark
JSON in RAW_DIR, and, for each step log with training progress, the per-epoch lines it printed (elapsed seconds,
loss, hold-out error): for a run stopped by its timeout those lines are all there is. Only two files go to OUT_DIR
(the device machine returns at most eight); everything else is in raw.tar.gz.
"""

from __future__ import annotations

import json
import re
import sys
import tarfile
from pathlib import Path
from typing import Any

EPOCH = re.compile(r"^(?P<step>\S+)\s+(?P<t>[\d.]+) .*?epoch (?P<epoch>\d+)\S* .*?loss (?P<loss>[-\d.naif]+)")
HOLDOUT = re.compile(r"holdout (?P<m>[\d.]+) m")


def bench_headline(d: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "model", "device", "params", "n_train", "n_test", "train_time_s", "finished_at", "git_commit")
    out = {k: d[k] for k in keys if k in d}
    if "metrics" in d:
        m = d["metrics"]
        out["metrics"] = {k: m.get(k) for k in ("mean_m", "median_m", "p75_m", "p95_m", "floor_hit", "building_hit")}
    if "latency" in d:
        out["latency"] = d["latency"]
    if "runs" in d:  # bench.mtloc
        out["runs"] = [
            {k: r.get(k) for k in ("strategy", "fraction", "train_s", "best_epoch", "all")} for r in d["runs"]
        ]
        out["wknn"] = d.get("wknn")
    if "models" in d:  # bench.gpu_predict
        out["models"] = [{k: m.get(k) for k in ("model", "device", "data", "train_s", "batches")} for m in d["models"]]
    return out


def epochs_of(log: Path) -> list[dict[str, Any]]:
    rows = []
    for line in log.read_text(errors="replace").splitlines():
        m = EPOCH.match(line)
        if m is None:
            continue
        row: dict[str, Any] = {"t_s": float(m["t"]), "epoch": int(m["epoch"]), "loss": m["loss"]}
        h = HOLDOUT.search(line)
        if h is not None:
            row["holdout_mean_m"] = float(h["m"])
        rows.append(row)
    return rows


def summarize(raw: Path, out: Path) -> dict[str, Any]:
    steps = []
    if (raw / "steps.jsonl").exists():
        steps = [json.loads(line) for line in (raw / "steps.jsonl").read_text().splitlines() if line.strip()]
    summary: dict[str, Any] = {"steps": steps, "facts": None, "results": {}, "epoch_logs": {}}
    if (raw / "facts.json").exists():
        summary["facts"] = json.loads((raw / "facts.json").read_text())
    for path in sorted(raw.glob("*.json")):
        if path.name == "facts.json":
            continue
        try:
            summary["results"][path.stem] = bench_headline(json.loads(path.read_text()))
        except (json.JSONDecodeError, OSError) as exc:
            summary["results"][path.stem] = {"unreadable": str(exc)}
    for log in sorted(raw.glob("*.log")):
        rows = epochs_of(log)
        if rows:
            summary["epoch_logs"][log.stem] = rows
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with tarfile.open(out / "raw.tar.gz", "w:gz") as tar:
        for path in sorted(raw.iterdir()):
            if path.name != "fixture-data":
                tar.add(path, arcname=f"gpu-raw/{path.name}")
    return summary


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python scripts/gpu_check_summary.py RAW_DIR OUT_DIR")
    summarize(Path(sys.argv[1]), Path(sys.argv[2]))
