"""Batched `predict` throughput per model on one device: what `/locate`'s batching executor gets per call.

    python -m bench.gpu_predict --device cuda                       # UJIIndoorLoc + one ILC floor from ../shared/data
    python -m bench.gpu_predict --device cpu --fixtures --tiny      # the test fixtures, tiny networks (seconds)

Per model (default wknn, dnn, cnnloc, itoloc, mtloc) a model is trained briefly (`--epochs`, default 1: throughput
depends on the network's shape, not on how well it learned; `--tiny` also narrows the networks), then
`model.predict(QueryBatch)` is timed at each batch size (`--batches`, default 1,32,256) on held-out rows (repeated
when there are fewer): `--warmup` untimed calls, then calls until `--min-seconds` have passed (at least 5), each
bracketed by `torch.cuda.synchronize()` on a GPU. wknn runs in numpy on the CPU whatever `--device` says (there is no
torch path for it); mtloc's answer includes its kNN blend, also numpy. Fingerprint models use UJIIndoorLoc
(trainingData -> validationData), mtloc the sensor windows of one ILC floor (`--ilc-floor`, default site2/F3).

Results are written after each model to `<out>/gpu_predict.json` (so a run stopped by a timeout keeps what it
measured) and printed one line per batch size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.core import _json_default, device_info, git_commit, machine, resolve_data_dir
from ml.data.features import FingerprintSet, build_set
from ml.models import get_model_class
from ml.models.base import LocModel, QueryBatch

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
MODELS = ("wknn", "dnn", "cnnloc", "itoloc", "mtloc")

# Per-model training settings for a throughput run: the default architecture, trained as little as possible.
BRIEF: dict[str, dict[str, Any]] = {
    "wknn": {},
    "dnn": {"refit_all": False},
    "cnnloc": {"refit_all": False, "sae_epochs": 1},
    "itoloc": {"min_steps": 0},
    "mtloc": {},
}
TINY: dict[str, dict[str, Any]] = {
    "wknn": {},
    "dnn": {"hidden": 64, "latent": 32, "rep": 32},
    "cnnloc": {"hidden": 64, "latent": 32, "rep": 32, "channels": 4},
    "itoloc": {"n_aps": 12, "width": 8, "pool_out": 2, "cell_m": 5.0},
    "mtloc": {"n_aps": 64, "wifi_hidden": 16, "imu_hidden": 8, "mag_hidden": 8, "fusion_hidden": 16},
}
EPOCH_PARAM = {"dnn": "epochs", "cnnloc": "epochs", "itoloc": "epochs", "mtloc": "epochs"}


def load_data(args: argparse.Namespace, kind: str) -> tuple[FingerprintSet, FingerprintSet, str]:
    """(train, queries, description) for `kind`."""
    if kind == "mtloc":
        from ml.data.ilc2020 import read_ilc_windows

        if args.fixtures:
            path, what = FIXTURES / "ilc_site1_F1_small.tar.xz", "fixture ilc_site1_F1_small windows"
        else:
            site, floor = args.ilc_floor.split("/")
            path = resolve_data_dir(args.data_dir) / "ilc2020" / site / f"{floor}.tar.xz"
            what = f"ILC {site}/{floor} sensor windows (stride 200 ms)"
        fs = build_set(list(read_ilc_windows(path, stride_ms=200)))
        return fs, fs.subset(np.arange(1, len(fs), 2)), what
    from ml.data.ujiindoorloc import load_uji, read_ujiindoorloc

    if args.fixtures:
        train = build_set(list(read_ujiindoorloc(FIXTURES / "uji_train_small.csv")))
        test = build_set(list(read_ujiindoorloc(FIXTURES / "uji_validation_small.csv")), train.aps)
        return train, test, "fixture UJI slices"
    data_dir = resolve_data_dir(args.data_dir)
    train = build_set(load_uji(data_dir, "train"))
    return train, build_set(load_uji(data_dir, "validation"), train.aps), "UJIIndoorLoc trainingData -> validationData"


def batch_of(queries: FingerprintSet, size: int) -> QueryBatch:
    """`size` query rows (the held-out rows repeated as needed)."""
    idx = np.arange(size) % len(queries)
    return QueryBatch.from_set(queries.subset(idx))


def time_predict(model: LocModel, batch: QueryBatch, device: str, warmup: int, min_seconds: float) -> dict[str, Any]:
    import torch

    cuda = device.startswith("cuda") and torch.cuda.is_available()

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for _ in range(warmup):
        model.predict(batch)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < min_seconds:
        sync()
        t0 = time.perf_counter()
        model.predict(batch)
        sync()
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000.0
    return {
        "batch": len(batch),
        "calls": len(times),
        "p50_ms": round(float(np.median(ms)), 3),
        "p95_ms": round(float(np.percentile(ms, 95)), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "queries_per_s": round(len(batch) / float(ms.mean() / 1000.0), 1),
    }


def run_model(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    train, queries, what = load_data(args, kind)
    params = {**BRIEF[kind], **(TINY[kind] if args.tiny else {})}
    if kind in EPOCH_PARAM:
        params[EPOCH_PARAM[kind]] = args.epochs
    device = "cpu" if kind == "wknn" else args.device
    t0 = time.perf_counter()
    model = get_model_class(kind).fit(train, params, seed=args.seed, device=device)
    train_s = time.perf_counter() - t0
    queries = queries.with_aps(model.aps)
    out: dict[str, Any] = {
        "model": kind,
        "data": what,
        "n_train": len(train),
        "n_queries": len(queries),
        "params": params,
        "device": "cpu (numpy)" if kind == "wknn" else device,
        "train_s": round(train_s, 2),
        "batches": [],
    }
    for size in args.batches:
        row = time_predict(model, batch_of(queries, size), device, args.warmup, args.min_seconds)
        out["batches"].append(row)
        print(
            f"{kind:7s} {out['device']:12s} batch {size:4d}: p50 {row['p50_ms']:9.3f} ms, "
            f"{row['queries_per_s']:10.1f} queries/s ({row['calls']} calls)",
            flush=True,
        )
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_predict", description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--batches", default="1,32,256")
    p.add_argument("--data-dir", type=Path, default=None, help="default: ../shared/data")
    p.add_argument("--ilc-floor", default="site2/F3", help="mtloc's data: SITE/FLOOR")
    p.add_argument("--fixtures", action="store_true", help="the test fixtures instead of the shared data")
    p.add_argument("--tiny", action="store_true", help="narrow networks (a CPU smoke test)")
    p.add_argument("--epochs", type=int, default=1, help="training epochs before timing")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--min-seconds", type=float, default=1.0, help="timed calls per batch size last at least this")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    args = p.parse_args(list(argv))
    args.models = [m for m in args.models.split(",") if m]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    unknown = sorted(set(args.models) - set(MODELS))
    if unknown:
        p.error(f"unknown models {unknown}; known: {', '.join(MODELS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    git_commit()
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gpu_predict.json"
    result: dict[str, Any] = {
        "name": "gpu_predict",
        "command": " ".join(["python", "-m", "bench.gpu_predict", *argv]),
        "git_commit": git_commit(),
        "machine": machine(),
        "device": device_info(args.device),
        "models": [],
    }
    for kind in args.models:
        result["models"].append(run_model(kind, args))
        result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        path.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
