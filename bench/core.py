"""`siteloc bench`: reproduce every reported accuracy and latency number from the command line.

    siteloc bench uji                                  # trainingData -> validationData
    siteloc bench ilc --site site1 --floor B1          # 75/25 split by path, --seed 0
    siteloc bench ilc --site site1 --floor B1 --train-fraction 0.25
    siteloc bench ilc --site all --floor all           # every floor, then per site all floors together
    siteloc bench detect                               # which site does each test scan come from?

Each run writes `<out>/<name>.json` (metrics, training time, tuned params,
latency, sizes, the command line, the git commit) and `<out>/<name>_cdf.png`
(the error CDF). `--params JSON` is passed to the model's `fit`; `--tag`
keeps differently-configured runs apart.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ml.data.features import FingerprintSet, build_set
from ml.detect import detect_site
from ml.evaluate import errors_m, metrics
from ml.finetune import finetune, fit_model
from ml.models import available_models, get_model_class
from ml.models.base import LocModel, QueryBatch
from ml.types import Fingerprint

REPO_ROOT = Path(__file__).resolve().parents[1]
LATENCY_QUERIES = 200  # single-query predict calls timed per run


class BenchError(Exception):
    """A bad invocation or missing data: reported as one line, exit status 2."""


@dataclass
class Split:
    """Labelled train/test fingerprints of one benchmark run."""

    name: str
    train: list[Fingerprint]
    test: list[Fingerprint]
    description: str


# ---------------------------------------------------------------- data selections


def uji_split(data_dir: Path) -> Split:
    from ml.data.ujiindoorloc import load_uji

    return Split("uji", load_uji(data_dir, "train"), load_uji(data_dir, "validation"), "trainingData -> validationData")


def path_split(fps: list[Fingerprint], test_fraction: float, seed: int) -> tuple[list[Fingerprint], list[Fingerprint]]:
    from ml.data.splits import split_by_group

    train_idx, test_idx = split_by_group([fp.path for fp in fps], test_fraction, seed)
    return [fps[i] for i in train_idx], [fps[i] for i in test_idx]


def take_train_fraction(train: list[Fingerprint], fraction: float, seed: int) -> list[Fingerprint]:
    from ml.data.splits import train_fraction_subset

    if fraction >= 1.0:
        return train
    return [train[i] for i in train_fraction_subset([fp.path for fp in train], fraction, seed)]


@functools.cache
def load_floor(data_dir: Path, site: str, floor: str) -> tuple[Fingerprint, ...]:
    """One floor's scans, parsed once per process (`--floor all` and `detect` reuse them)."""
    from ml.data.ilc2020 import load_ilc_floor

    return tuple(load_ilc_floor(data_dir, site, floor))


def time_split(fps: list[Fingerprint], test_fraction: float) -> tuple[list[Fingerprint], list[Fingerprint]]:
    """Survey now, serve later: the paths recorded first train, the latest `test_fraction` of them test."""
    from ml.data.splits import split_by_time

    train_idx, test_idx = split_by_time([fp.timestamp for fp in fps], [fp.path for fp in fps], test_fraction)
    return [fps[i] for i in train_idx], [fps[i] for i in test_idx]


def ilc_floor_split(data_dir: Path, site: str, floor: str, args: argparse.Namespace) -> Split:
    fps = list(load_floor(data_dir, site, floor))
    if args.split == "time":
        train, test = time_split(fps, args.test_fraction)
        how = f"the latest {args.test_fraction:g} of the paths (by first scan time) to test"
    else:
        train, test = path_split(fps, args.test_fraction, args.seed)
        how = f"paths split {1 - args.test_fraction:g}/{args.test_fraction:g} (seed {args.seed})"
    train = take_train_fraction(train, args.train_fraction, args.seed)
    desc = f"{site}/{floor}: {how}"
    if args.train_fraction < 1.0:
        desc += f", {args.train_fraction:g} of the training paths"
    return Split(f"ilc_{site}_{floor}{_fraction_suffix(args)}", train, test, desc)


def ilc_site_split(data_dir: Path, site: str, floors: list[str], args: argparse.Namespace) -> Split:
    """All floors of a site together (floor classification): each floor split by path as in its
    single-floor run, so the test paths are the union of the per-floor test paths."""
    parts = [ilc_floor_split(data_dir, site, floor, args) for floor in floors]
    train = [fp for p in parts for fp in p.train]
    test = [fp for p in parts for fp in p.test]
    desc = f"{site} floors {'+'.join(floors)} together; each floor's paths split as in its own run ({args.split})"
    return Split(f"ilc_{site}_allfloors{_fraction_suffix(args)}", train, test, desc)


def _fraction_suffix(args: argparse.Namespace) -> str:
    suffix = "_time" if args.split == "time" else ""
    return suffix + ("" if args.train_fraction >= 1.0 else f"_train{args.train_fraction:g}")


def site_floors(data_dir: Path) -> dict[str, list[str]]:
    from ml.data.ilc2020 import ilc_floors

    out: dict[str, list[str]] = {}
    for site, floor, _ in ilc_floors(data_dir):
        out.setdefault(site, []).append(floor)
    if not out:
        raise BenchError(f"no ILC floor archives under {data_dir / 'ilc2020'}")
    return out


# ---------------------------------------------------------------- one run


def train_model(
    model_name: str, train: FingerprintSet, params: dict[str, Any], seed: int, verbose: bool, device: str = "cpu"
) -> tuple[LocModel, float]:
    def progress(fraction: float, message: str) -> None:
        if verbose:
            print(f"  [{fraction:4.0%}] {message}", file=sys.stderr, flush=True)

    cls = get_model_class(model_name)
    fraction, by = cls.holdout_settings(params)
    t0 = time.perf_counter()
    done = finetune(
        train,
        fit_model(cls, params, seed=seed, device=device),
        holdout_fraction=fraction,
        holdout_by=by,
        seed=seed,
        progress=progress,
        device=device,
    )
    return done.model, time.perf_counter() - t0


def measure_latency(model: LocModel, test: FingerprintSet, n_train: int) -> dict[str, Any]:
    """Single-query predict latency (p50/p95 over up to LATENCY_QUERIES test scans) and batch throughput."""
    batch = QueryBatch.from_set(test)
    n = min(LATENCY_QUERIES, len(test))
    model.predict(QueryBatch(rss=batch.rss[:1], age_ms=_rows(batch.age_ms, 0, 1)))  # warm-up
    times = []
    for i in range(n):
        one = QueryBatch(rss=batch.rss[i : i + 1], age_ms=_rows(batch.age_ms, i, i + 1))
        t0 = time.perf_counter()
        model.predict(one)
        times.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    model.predict(batch)
    batch_s = time.perf_counter() - t0
    ms = np.array(times) * 1000.0
    return {
        "single_query_p50_ms": float(np.percentile(ms, 50)) if n else None,
        "single_query_p95_ms": float(np.percentile(ms, 95)) if n else None,
        "single_query_n": n,
        "batch_size": len(test),
        "batch_s": batch_s,
        "batch_queries_per_s": len(test) / batch_s if batch_s > 0 else None,
        "n_train_fingerprints": n_train,  # what the model matches against (after dropping empty/duplicate rows)
    }


def _rows(a: np.ndarray | None, lo: int, hi: int) -> np.ndarray | None:
    return None if a is None else a[lo:hi]


def run_split(split: Split, args: argparse.Namespace, ctx: RunContext) -> dict[str, Any]:
    """Train on split.train, score on split.test, write <name>.json and <name>_cdf.png."""
    if not split.train or not split.test:
        raise BenchError(f"{split.name}: empty train ({len(split.train)}) or test ({len(split.test)}) set")
    train = build_set(split.train)
    test = build_set(split.test, train.aps)
    print(f"{split.name}: {len(train)} train, {len(test)} test, {len(train.aps)} APs", file=sys.stderr, flush=True)
    model, train_s = train_model(args.model, train, ctx.params, args.seed, args.verbose, args.device)
    pred = model.predict(QueryBatch.from_set(test))
    result = {
        **ctx.header(split.name, split.description),
        "n_train": len(train),
        "n_test": len(test),
        "n_aps": len(train.aps),
        "train_time_s": train_s,
        "metrics": metrics(pred, test),
        "model_config": _model_summary(model),
        "latency": measure_latency(model, test, _n_fingerprints(model, len(train))),
    }
    ctx.write(split.name, result, errors_m(pred, test))
    return result


def _model_summary(model: LocModel) -> dict[str, Any]:
    """The chosen settings and tuning report from the model's config (not its vocabulary)."""
    cfg = model.config()
    return {k: v for k, v in cfg.items() if k in ("params", "tuning", "calibration", "min_rss")}


def _n_fingerprints(model: LocModel, default: int) -> int:
    arrays = model.arrays()
    return len(arrays["xy"]) if "xy" in arrays else default


# ---------------------------------------------------------------- site detection


def run_detect(data_dir: Path, args: argparse.Namespace, ctx: RunContext) -> dict[str, Any]:
    """Fit one model per site, then detect the site of every test scan of every site."""
    floors = site_floors(data_dir)
    splits = [uji_split(data_dir)] + [ilc_site_split(data_dir, s, fl, args) for s, fl in sorted(floors.items())]
    names = ["uji", *sorted(floors)]
    models: dict[str, LocModel] = {}
    vocab: dict[str, set[str]] = {}
    for name, split in zip(names, splits, strict=True):
        train = build_set(split.train)
        models[name], _ = train_model(args.model, train, ctx.params, args.seed, args.verbose, args.device)
        vocab[name] = set(train.aps)
    confusion: dict[str, dict[str, int]] = {}
    t0 = time.perf_counter()
    n_total = n_tie_breaks = 0
    for name, split in zip(names, splits, strict=True):
        row = confusion.setdefault(name, {})
        for fp in split.test:
            got = detect_site([r.bssid for r in fp.wifi], vocab, _distance_fn(fp, models))
            key = "no match" if got is None else got.site
            row[key] = row.get(key, 0) + 1
            n_total += 1
            n_tie_breaks += got is not None and got.distance is not None
    detect_s = time.perf_counter() - t0
    correct = sum(confusion[s].get(s, 0) for s in names)
    result = {
        **ctx.header("detect", "site of each test scan among " + ", ".join(names)),
        "sites": {
            s: {"n_train": len(sp.train), "n_test": len(sp.test), "n_aps": len(vocab[s])}
            for s, sp in zip(names, splits, strict=True)
        },
        "n_test": n_total,
        "accuracy": correct / n_total if n_total else float("nan"),
        "no_match_rate": sum(r.get("no match", 0) for r in confusion.values()) / n_total if n_total else float("nan"),
        "per_site_accuracy": {s: confusion[s].get(s, 0) / max(sum(confusion[s].values()), 1) for s in names},
        "confusion": confusion,
        "tie_breaks": n_tie_breaks,  # scans where the model distance decided between sites
        "mean_detect_ms": detect_s / n_total * 1000.0 if n_total else None,
    }
    ctx.write("detect", result, None)
    return result


def _distance_fn(fp: Fingerprint, models: dict[str, LocModel]) -> Callable[[str], float]:
    """Tie-break: the site model's nearest-fingerprint distance for this scan (inf if unsupported)."""

    def distance(site: str) -> float:
        model = models[site]
        nearest = getattr(model, "nearest_distance", None)
        if nearest is None:
            return float("inf")
        q = build_set([fp], model.aps)
        return float(nearest(QueryBatch.from_set(q))[0])

    return distance


# ---------------------------------------------------------------- output


class RunContext:
    """What every result JSON carries, and where results go."""

    def __init__(self, args: argparse.Namespace, argv: Sequence[str], prog: str) -> None:
        self.args = args
        self.params: dict[str, Any] = args.params
        self.command = shlex.join([*prog.split(), *argv])
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)

    def header(self, name: str, description: str) -> dict[str, Any]:
        return {
            "name": self.tagged(name),
            "dataset": description,
            "model": self.args.model,
            "params": self.params,
            "seed": self.args.seed,
            "device": device_info(self.args.device),
            "command": self.command,
            "git_commit": git_commit(),
            "machine": machine(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def tagged(self, name: str) -> str:
        tag = f"_{self.args.tag}" if self.args.tag else ""
        return f"{name}_{self.args.model}{tag}"

    def write(self, name: str, result: dict[str, Any], errors: np.ndarray | None) -> None:
        stem = self.tagged(name)
        path = self.out / f"{stem}.json"
        path.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
        if errors is not None:
            plot_cdf(errors, self.out / f"{stem}_cdf.png", f"{stem}: 2-D error CDF (n={len(errors)})")
        print(f"wrote {path}: {_headline(result)}", flush=True)


def _headline(result: dict[str, Any]) -> str:
    m = result.get("metrics")
    if m is None:
        return f"accuracy {result.get('accuracy', float('nan')):.4f}"
    return f"mean {m['mean_m']:.2f} m, median {m['median_m']:.2f} m, floor hit {m['floor_hit']:.4f}"


def _json_default(obj: object) -> object:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def plot_cdf(errors: np.ndarray, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = np.sort(errors)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(e, np.arange(1, len(e) + 1) / max(len(e), 1))
    ax.set_xlabel("2-D error (m)")
    ax.set_ylabel("fraction of queries")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, float(np.percentile(e, 99)) * 1.05 if len(e) else 1)
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


@functools.cache
def source_digest(*patterns: str) -> str:
    """Short digest of the repository's source files matching `patterns` (globs under the repo root): part of the
    key of the benchmarks' on-disk caches, so that what older code parsed or trained is never reused."""
    h = hashlib.sha256()
    for pattern in patterns:
        for src in sorted(REPO_ROOT.glob(pattern)):
            h.update(str(src.relative_to(REPO_ROOT)).encode() + b"\0" + src.read_bytes())
    return h.hexdigest()[:10]


@functools.cache
def git_commit() -> str | None:
    """The commit checked out when this process first asked (every bench's `main` asks at its start), so a
    result records the code that ran, not what was committed while a long run went on."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def machine() -> dict[str, Any]:
    """Where a result was measured. A seeded training run is bit-identical when repeated on one machine; runs of
    the same code in two sessions have not been (the machines may differ), so the CPU, the instruction set torch's
    kernels use and the torch version are recorded."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        **cpu_info(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,  # context for timings
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def device_info(device: str) -> dict[str, Any]:
    """The torch device a run trained on and, for a GPU, which one (its name, the torch CUDA build and the TF32
    switches, which change convolution and matmul precision on the GPU)."""
    info: dict[str, Any] = {"device": device}
    if not device.startswith("cuda"):
        return info
    import torch

    info.update(
        gpu=torch.cuda.get_device_name(torch.device(device)),
        torch_cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version(),
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        tf32_cudnn=torch.backends.cudnn.allow_tf32,
    )
    return info


def cpu_info() -> dict[str, str | None]:
    """The CPU model, the instruction set torch's kernels use and the torch version (None where unknown)."""
    info: dict[str, str | None] = {"cpu_model": None, "torch_cpu_capability": None, "torch": None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import torch
    except ImportError:  # wknn-only installs have no torch
        return info
    info["torch"] = str(torch.__version__)
    info["torch_cpu_capability"] = str(torch.backends.cpu.get_cpu_capability())
    return info


# ---------------------------------------------------------------- CLI


def default_data_dir() -> Path | None:
    for base in (Path.cwd(), REPO_ROOT):
        candidate = (base / ".." / "shared" / "data").resolve()
        if candidate.is_dir():
            return candidate
    return None


def parse_args(argv: Sequence[str], prog: str) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default="wknn", help=f"one of: {', '.join(available_models())}")
    common.add_argument("--params", type=_json_object, default={}, help="JSON object passed to the model's fit")
    common.add_argument("--data-dir", type=Path, default=None, help="default: ../shared/data from CWD or repo root")
    common.add_argument("--out", type=Path, default=Path("bench-out"), help="output folder (default bench-out/)")
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--device", default="cpu", help="torch device the model trains and answers on (cpu, cuda)")
    common.add_argument("--tag", default="", help="suffix for output names, e.g. 'baseline'")
    common.add_argument("--test-fraction", type=float, default=0.25, help="ILC: fraction of paths held out")
    common.add_argument("--train-fraction", type=float, default=1.0, help="ILC: fraction of training paths used")
    common.add_argument(
        "--split",
        choices=("path", "time"),
        default="path",
        help="ILC: path = seeded random paths to test; time = the latest --test-fraction of the paths (cross-time)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="training progress on stderr")

    parser = argparse.ArgumentParser(prog=prog, description="Benchmarks: metrics JSON + error-CDF PNG per run.")
    sub = parser.add_subparsers(dest="dataset", required=True)
    sub.add_parser("uji", parents=[common], help="UJIIndoorLoc: trainingData -> validationData")
    ilc = sub.add_parser("ilc", parents=[common], help="ILC 2020: paths split per floor")
    ilc.add_argument("--site", default="site1", help="site1, site2 or all")
    ilc.add_argument(
        "--floor",
        default="B1",
        help="a floor (B1, F1, ...); 'all' = each floor in turn, then all floors together (floor "
        "classification); 'together' = only the all-floors run",
    )
    sub.add_parser("detect", parents=[common], help="site detection across UJI and the ILC sites")
    args = parser.parse_args(list(argv))
    if args.model not in available_models():
        parser.error(f"unknown --model {args.model!r}; available: {', '.join(available_models())}")
    if not 0 < args.test_fraction < 1 or not 0 < args.train_fraction <= 1:
        parser.error("--test-fraction must be in (0, 1) and --train-fraction in (0, 1]")
    return args


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--params is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--params must be a JSON object")
    return value


def ilc_run_start(
    module: str, argv: Sequence[str], data_arg: Path | None, protocol: str | None
) -> tuple[Path | None, dict[str, Any]]:
    """For the ILC session benchmarks (`bench.tracking`, `bench.selfmaint`): the data folder (None, with the error
    printed, when it has no ilc2020/) and the start of the result record (what ran, where, by which protocol)."""
    data_dir = data_arg or default_data_dir()
    if data_dir is None or not (data_dir / "ilc2020").is_dir():
        print(f"python -m {module}: error: no ILC data (pass --data-dir)", file=sys.stderr)
        return None, {}
    record = {
        "benchmark": module.rsplit(".", 1)[-1],
        "command": shlex.join(["python", "-m", module, *argv]),
        "git_commit": git_commit(),
        "machine": machine(),
        "protocol": protocol,
    }
    return data_dir, record


def ilc_session_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The arguments the ILC session benchmarks share (`bench.tracking`, `bench.selfmaint`): where the data is,
    which sites and floors, the seed, where the JSON goes (`--out`, `--tag`), and `--render FILE` (print the
    markdown of a result JSON and exit). Each benchmark adds its own."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=(doc or "").split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=None)
    p.add_argument("--sites", default="site1,site2")
    p.add_argument("--floors", default="", help="comma-separated floors (default: every floor of each site)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    p.add_argument("--tag", default="")
    p.add_argument("--render", type=Path, default=None, help="print the markdown of a result JSON and exit")
    return p


def ilc_floor_names(data_dir: Path, site: str, chosen: str = "") -> list[str]:
    """`chosen` ("F1,F2") or every floor archive of an ILC site."""
    if chosen:
        return chosen.split(",")
    return sorted(p.name.split(".")[0] for p in (data_dir / "ilc2020" / site).glob("*.tar.xz"))


def resolve_data_dir(arg: Path | None) -> Path:
    data_dir = arg if arg is not None else default_data_dir()
    if data_dir is None or not data_dir.is_dir():
        where = arg if arg is not None else "../shared/data (from the current directory or the repository root)"
        raise BenchError(f"data directory not found: {where}; pass --data-dir")
    return data_dir


def run_ilc(data_dir: Path, args: argparse.Namespace, ctx: RunContext) -> None:
    floors = site_floors(data_dir)
    sites = sorted(floors) if args.site == "all" else [args.site]
    for site in sites:
        if site not in floors:
            raise BenchError(f"unknown site {site!r}; have {', '.join(sorted(floors))}")
        if args.floor not in ("all", "together", *floors[site]):
            raise BenchError(f"unknown floor {args.floor!r} for {site}; have {', '.join(floors[site])}, all, together")
        single = floors[site] if args.floor == "all" else [] if args.floor == "together" else [args.floor]
        for floor in single:
            run_split(ilc_floor_split(data_dir, site, floor, args), args, ctx)
        if args.floor in ("all", "together"):
            run_split(ilc_site_split(data_dir, site, floors[site], args), args, ctx)


def main(argv: Sequence[str] | None = None, prog: str = "siteloc bench") -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    git_commit()  # the code that runs (cached for the process)
    args = parse_args(argv, prog)
    try:
        data_dir = resolve_data_dir(args.data_dir)
        ctx = RunContext(args, argv, prog)
        if args.dataset == "uji":
            run_split(uji_split(data_dir), args, ctx)
        elif args.dataset == "ilc":
            run_ilc(data_dir, args, ctx)
        else:
            run_detect(data_dir, args, ctx)
    except (BenchError, FileNotFoundError, ValueError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(prog="python -m bench"))
