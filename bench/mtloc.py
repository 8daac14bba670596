"""MTLoc benchmark (issue 6): paper 000's Table V and VI layouts on ILC 2020, against wknn on the same test points.

    python -m bench.mtloc                       # source site1 (all floors) -> every site2 floor
    python -m bench.mtloc --floors F3 --fractions 0.25,1 --epochs 10 --pretrain-epochs 5   # a quick look

Protocol, per target floor:

1. The floor's sensor windows (1 s, 10 Hz, one every `--stride-ms`; 100 ms = the paper's 900 ms overlap) are split
   by path: `--test-fraction` of the paths are test paths, the rest training paths (seeded). Test points are the test
   paths' windows, every round(`--test-stride-ms` / `--stride-ms`)-th one.
2. The IMU-LSTM is pretrained once on every floor of the source site (`ml.models.mtloc.pretrain_imu`, Table IV:
   RMSprop, lr 0.005, `--pretrain-epochs`; `--pretrain-target position` as in the paper, or `speed`).
3. `frozen` and `finetune` MTLoc are trained on each fraction of the training paths (`--fractions`, nested seeded
   subsets of whole paths), `scratch` at 25% and 100%. 0% is not run: MTLoc's fusion head outputs target-site
   coordinates, which no model can give without at least one labelled target path.
4. Every model answers the same test windows: all modalities (Table V), then with 40% of the windows losing each
   modality in turn and all three at once (`--wipe`, Table VI; a window never loses all its modalities).
5. `wknn` (the service default, tuned) is trained on the scan fingerprints of the same training paths (what a wknn
   site would be given) and answers each test window's WiFi scan (the latest at or before the window's end). Beside
   every figure: the coverage bound, each test point's distance to the nearest training label.

Results: `<out>/mtloc_<site>_<floor>[_<tag>].json`; `python -m bench.report docs/benchmarks/mtloc.md` renders them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.core import _json_default, device_info, git_commit, machine, resolve_data_dir
from ml.data.features import FingerprintSet, build_set
from ml.data.ilc2020 import ilc_floors, read_ilc_fingerprints, read_ilc_windows
from ml.data.splits import split_by_group, train_fraction_subset
from ml.evaluate import spearman
from ml.models import TRANSFER_STRATEGIES
from ml.models.base import LocModel, QueryBatch
from ml.models.itoloc import ITOLOC
from ml.models.mtloc import ImuArtifact, MTLoc, pretrain_imu
from ml.models.wknn import WKNN
from ml.types import SensorData

MODALITIES = ("wifi", "imu", "mag")


def floor_archives(data_dir: Path, site: str) -> dict[str, Path]:
    out = {floor: path for s, floor, path in ilc_floors(data_dir) if s == site}
    if not out:
        raise SystemExit(f"no ILC floors under {data_dir / 'ilc2020' / site}")
    return out


def stats(err: np.ndarray) -> dict[str, float | int]:
    if len(err) == 0:
        return {"n": 0}
    return {
        "n": len(err),
        "mean_m": round(float(err.mean()), 3),
        "median_m": round(float(np.median(err)), 3),
        "std_m": round(float(err.std()), 3),
        "p75_m": round(float(np.percentile(err, 75)), 3),
        "p95_m": round(float(np.percentile(err, 95)), 3),
    }


def wiped(test: FingerprintSet, which: Sequence[str], share: float, seed: int) -> FingerprintSet:
    """`test` with each modality in `which` removed from a seeded `share` of the windows (never all of one's)."""
    rng = np.random.default_rng(seed)
    n = len(test)
    gone = np.zeros((n, 3), dtype=bool)
    for k, m in enumerate(MODALITIES):
        if m in which:
            gone[rng.choice(n, size=round(share * n), replace=False), k] = True
    everything = gone.all(axis=1)
    gone[everything, 0] = False  # keep the WiFi of a window that would lose everything
    rss = test.rss.copy()
    rss[gone[:, 0]] = np.nan
    sensors = np.empty(n, dtype=object)
    for i, s in enumerate(test.sensors if test.sensors is not None else [None] * n):
        if s is None:
            sensors[i] = None
            continue
        imu_gone, mag_gone = gone[i, 1], gone[i, 2]
        sensors[i] = SensorData(
            rate_hz=s.rate_hz,
            accel=None if imu_gone else s.accel,
            gyro=None if imu_gone else s.gyro,
            mag=None if mag_gone else s.mag,
        )
    out = test.subset(np.arange(n))
    out.rss, out.sensors = rss, sensors
    return out


def answer(model: LocModel, test: FingerprintSet) -> tuple[np.ndarray, np.ndarray]:
    pred = model.predict(QueryBatch.from_set(test.with_aps(model.aps)))
    return np.hypot(*(pred.xy - test.xy).T), pred.error_m


def every_kth(fs: FingerprintSet, k: int) -> np.ndarray:
    """Rows of every k-th window of each path, in time order (one test point per test stride)."""
    order = np.lexsort((fs.timestamp, fs.path.astype(str)))
    rank = np.zeros(len(fs), dtype=np.int64)
    prev, r = None, 0
    for i in order:
        r = r + 1 if fs.path[i] == prev else 0
        prev = fs.path[i]
        rank[i] = r
    return np.flatnonzero(rank % k == 0)


def coverage_bound(train_xy: np.ndarray, test_xy: np.ndarray) -> np.ndarray:
    """Each test point's distance to the nearest training label."""
    out = np.empty(len(test_xy))
    for i in range(0, len(test_xy), 2048):
        d = np.hypot(
            test_xy[i : i + 2048, None, 0] - train_xy[None, :, 0], test_xy[i : i + 2048, None, 1] - train_xy[None, :, 1]
        )
        out[i : i + 2048] = d.min(axis=1)
    return out


def run_floor(
    args: argparse.Namespace, site: str, floor: str, path: Path, arts: dict[str, ImuArtifact], log: Any
) -> dict[str, Any]:
    windows = list(read_ilc_windows(path, stride_ms=args.stride_ms))
    scans = list(read_ilc_fingerprints(path))
    fs = build_set(windows)
    train_idx, test_idx = split_by_group(fs.path, args.test_fraction, args.seed)
    train_all, test = fs.subset(train_idx), fs.subset(test_idx)
    test = test.subset(every_kth(test, max(1, round(args.test_stride_ms / args.stride_ms))))
    train_paths = set(train_all.path.tolist())
    log(f"{site}/{floor}: {len(train_all)} training windows on {len(train_paths)} paths, {len(test)} test windows")
    bound = coverage_bound(train_all.xy, test.xy)
    out: dict[str, Any] = {
        "site": site,
        "floor": floor,
        "n_train_windows": len(train_all),
        "n_train_paths": len(train_paths),
        "n_test_windows": len(test),
        "n_test_paths": len(set(test.path.tolist())),
        "coverage_bound": stats(bound),
        "runs": [],
    }
    # wknn: the scans of the training paths, answering the test windows' WiFi
    wk_train = build_set([f for f in scans if f.path in train_paths])
    t0 = time.perf_counter()
    wk = WKNN.fit(wk_train, {}, seed=args.seed)
    err, est = answer(wk, test)
    out["wknn"] = {
        **stats(err),
        "train_s": round(time.perf_counter() - t0, 1),
        "error_m_spearman": round(spearman(err, est), 3),
    }
    log(f"  wknn: mean {err.mean():.2f} m")
    if args.itoloc:
        t0 = time.perf_counter()
        it = ITOLOC.fit(wk_train, args.itoloc_params, seed=args.seed, device=args.device)
        err, est = answer(it, test)
        out["itoloc"] = {
            **stats(err),
            "train_s": round(time.perf_counter() - t0, 1),
            "error_m_spearman": round(spearman(err, est), 3),
            "params": args.itoloc_params,
        }
        log(f"  itoloc: mean {err.mean():.2f} m")
    jobs: list[tuple[str, str | None, float]] = [("scratch", None, f) for f in sorted(set(args.scratch_fractions))]
    for kind in arts:
        fractions = args.fractions if kind == args.pretrain_target else args.variant_fractions
        jobs += [(s, kind, f) for s in args.strategies for f in fractions]
    for strategy, target, fraction in jobs:
        sub = train_all.subset(train_fraction_subset(train_all.path, fraction, args.seed))
        t0 = time.perf_counter()
        model = MTLoc.fit(
            sub,
            args.params,
            seed=args.seed,
            imu_source=None if target is None else arts[target],
            strategy=strategy,
            device=args.device,
        )
        train_s = time.perf_counter() - t0
        err, est = answer(model, test)
        run: dict[str, Any] = {
            "strategy": strategy if target in (None, args.pretrain_target) else f"{strategy} ({target})",
            "pretrain_target": target,
            "fraction": fraction,
            "n_train_windows": len(sub),
            "train_s": round(train_s, 1),
            "best_epoch": model.info.get("best_epoch"),
            "all": {
                **stats(err),
                "error_m_spearman": round(spearman(err, est), 3),
                "error_m_median": round(float(np.median(est)), 3),
            },
        }
        if fraction == 1.0:
            for which in [[m] for m in MODALITIES] + [list(MODALITIES)]:
                e2, est2 = answer(model, wiped(test, which, args.wipe, args.seed))
                run["wipe_" + "+".join(which)] = {**stats(e2), "error_m_median": round(float(np.median(est2)), 3)}
        out["runs"].append(run)
        log(
            f"  {run['strategy']} {fraction:g}: mean {err.mean():.2f} m, "
            f"median {np.median(err):.2f} m ({train_s:.0f} s)"
        )
    return out


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.mtloc", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=None, help="default: ../shared/data")
    p.add_argument("--source", default="site1", help="source site: every floor pretrains the IMU-LSTM")
    p.add_argument("--target", default="site2")
    p.add_argument("--floors", default="", help="comma-separated target floors (default all)")
    p.add_argument("--fractions", default="0.125,0.25,0.375,0.5,0.625,0.75,0.875,1")
    p.add_argument("--scratch-fractions", default="0.25,1")
    p.add_argument("--strategies", default="frozen,finetune")
    p.add_argument("--stride-ms", type=int, default=100, help="window stride (100 ms = 900 ms overlap)")
    p.add_argument("--pretrain-stride-ms", type=int, default=100)
    p.add_argument(
        "--test-stride-ms",
        type=int,
        default=500,
        help="test points: every round(this / --stride-ms)-th window of a test path (Python rounding)",
    )
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=None, help="MTLoc epochs (default: the model's)")
    p.add_argument("--pretrain-epochs", type=int, default=None, help="IMU-LSTM pretraining epochs (default 100)")
    p.add_argument("--pretrain-target", choices=("position", "speed"), default="position")
    p.add_argument(
        "--variant",
        choices=("position", "speed"),
        default=None,
        help="also pretrain on this target and run its frozen/finetune models at --variant-fractions",
    )
    p.add_argument("--variant-fractions", default="0.25,1")
    p.add_argument("--itoloc", action="store_true", help="also train itoloc on the training paths' scans")
    p.add_argument("--itoloc-params", type=json.loads, default={}, help="JSON object of itoloc params")
    p.add_argument("--params", type=json.loads, default={}, help="JSON object of extra mtloc params")
    p.add_argument("--wipe", type=float, default=0.4, help="Table VI: share of test windows losing a modality")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch device for the IMU pretraining, MTLoc and itoloc (cpu, cuda)")
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    p.add_argument("--tag", default="")
    args = p.parse_args(argv)
    args.fractions = [float(v) for v in args.fractions.split(",") if v]
    args.scratch_fractions = [float(v) for v in args.scratch_fractions.split(",") if v]
    args.variant_fractions = [float(v) for v in args.variant_fractions.split(",") if v]
    args.strategies = [s for s in args.strategies.split(",") if s]
    if any(not 0 < f <= 1 for f in args.fractions + args.scratch_fractions + args.variant_fractions):
        p.error("fractions must be in (0, 1]")
    if any(s not in TRANSFER_STRATEGIES["mtloc"] for s in args.strategies):
        p.error(f"strategies: {', '.join(TRANSFER_STRATEGIES['mtloc'])}")
    params = dict(args.params)
    if args.epochs is not None:
        params["epochs"] = args.epochs
    if args.pretrain_epochs is not None:
        params["pretrain_epochs"] = args.pretrain_epochs
    params["pretrain_target"] = args.pretrain_target
    args.params = params
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    git_commit()  # the code that runs, not what is checked out when a long run ends (cached for the process)
    args = parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.0f} s] {msg}", flush=True)

    targets = floor_archives(data_dir, args.target)
    floors = [f for f in args.floors.split(",") if f] or list(targets)
    missing = [f for f in floors if f not in targets]
    if missing:
        raise SystemExit(f"target floors not found: {missing}; have {sorted(targets)}")
    arts: dict[str, ImuArtifact] = {}
    pretrain: dict[str, Any] = {}
    if args.strategies:
        sources = {}
        for floor, path in floor_archives(data_dir, args.source).items():
            sources[f"{args.source}/{floor}"] = build_set(
                list(read_ilc_windows(path, stride_ms=args.pretrain_stride_ms)), aps=[]
            )
        targets_ = [args.pretrain_target] + ([args.variant] if args.variant not in (None, args.pretrain_target) else [])
        for target in targets_:
            n = sum(len(s) for s in sources.values())
            log(f"pretraining the IMU-LSTM ({target}) on {n} windows of {args.source}")
            t0 = time.perf_counter()
            art = pretrain_imu(sources, {**args.params, "pretrain_target": target}, seed=args.seed, device=args.device)
            pretrain[target] = {
                "train_s": round(time.perf_counter() - t0, 1),
                **{k: art.config[k] for k in ("n_windows", "target", "epochs")},
                "first_mse": art.config["loss"][0],
                "final_mse": art.config["loss"][-1],
            }
            arts[target] = art
            log(
                f"pretrained in {pretrain[target]['train_s']} s, "
                f"mse {art.config['loss'][0]} -> {art.config['loss'][-1]}"
            )
        del sources
    command = shlex.join(["python", "-m", "bench.mtloc", *argv])
    for floor in floors:
        result = {
            "name": f"mtloc_{args.target}_{floor}" + (f"_{args.tag}" if args.tag else ""),
            "command": command,
            "git_commit": git_commit(),
            "machine": machine(),
            "params": args.params,
            "seed": args.seed,
            "device": device_info(args.device),
            "source": args.source,
            "pretrain": pretrain,
            **run_floor(args, args.target, floor, targets[floor], arts, log),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        path = args.out / f"{result['name']}.json"
        path.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
