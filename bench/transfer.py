"""`python -m bench.transfer`: the cross-site transfer study of issue 7 (paper 004 Table 1 layout).

    python -m bench.transfer                                  # everything (hours on 2 CPU cores)
    python -m bench.transfer --targets uji_b0 --models dnn --uji-repeats 2

Sites (see `bench.sites`): the three UJIIndoorLoc buildings and the two ILC 2020 malls. For
every target site the other sites are the sources. Each source site contributes what its model
version would store (`ml.transfer.make_source_artifact`, built from its full training data):
an msta teacher per site, and for encoder one base pretrained jointly on the target's sources.
Then, per repeat, a seeded fraction of the target's training data (10% of the rows for UJI,
25% of the paths for ILC) trains the network from scratch, with encoder and with msta, all on
the same fit/hold-out split; each is refit and scored on the target's test set. "kept" is what
`fit_transfer` returns: the transferred network unless scratch beat it on the hold-out.
Ceiling (`--full-data`, on by default): scratch once on all of each target's training data, the
error a method would reach if knowing the sources were as good as surveying the whole target.

Convergence: the test error is recorded after every epoch of the fit-part training run (it is
never used for any choice); "epochs to reach" is the first epoch at which a method's test error
is at or below the scratch network's test error at the epoch its hold-out selected.

Outputs `<out>/transfer<tag>.json` (every run, the summary, artifact build times, the command,
the git commit, the machine) and `<out>/transfer<tag>.md` (the tables). Runs are appended to
`<out>/transfer<tag>_runs.jsonl` as they finish and skipped when the command is re-run, so an
interrupted study resumes. Artifacts are cached under `--cache`.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.core import cpu_info, git_commit, machine, resolve_data_dir, source_digest
from bench.sites import ALL_SITES, ILC_SITES, SiteData, load_site, small_train
from ml.data.features import FingerprintSet
from ml.evaluate import metrics
from ml.models import model_strategies
from ml.models.base import QueryBatch
from ml.models.fpmodel import features, finalize, prepare
from ml.models.fpnets import SiteLabels, SpecialisedNet
from ml.models.fptrain import Callback, TrainData, score_net
from ml.transfer import (
    AllParams,
    SourceArtifact,
    choose,
    make_source_artifact,
    net_class,
    split_params,
    train_candidates,
)

METHODS = model_strategies("dnn")  # scratch, then the cross-site transfer strategies (the same for cnnloc)
METRIC_KEYS = ("mean_m", "median_m", "p75_m", "p95_m", "floor_hit", "error_estimate_spearman")


@dataclass
class Study:
    args: argparse.Namespace
    ap: AllParams
    sites: dict[str, SiteData]
    cache: Path
    log: Callable[[str], None]


# ---------------------------------------------------------------- artifacts


# Settings that change what make_source_artifact builds (the rest only matter on the target side).
ARTIFACT_KEYS = {
    "msta": (
        "noise_dim",
        "gen_hidden",
        "gan_steps",
        "n_critic",
        "gp_weight",
        "gan_lr",
        "gan_batch",
        "sim_weight",
        "mae_weight",
        "margin_rad",
    ),
    "encoder": ("pretrain_epochs",),
}


def params_hash(ap: AllParams, strategy: str, seed: int) -> str:
    """Cache key of an artifact: the network settings, the strategy's source-side settings, the seed and a digest
    of the code that builds it (an artifact older code built is never reused)."""
    everything = ap.to_json()
    used = {**asdict(ap.net), **{k: everything[k] for k in ARTIFACT_KEYS[strategy]}}
    code = source_digest("ml/models/*.py", "ml/data/*.py", "ml/transfer*.py", "ml/params.py", "ml/seed.py")
    blob = json.dumps({"params": used, "seed": seed, "code": code}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def cached_artifact(study: Study, key: str, build: Callable[[], SourceArtifact]) -> tuple[SourceArtifact, float]:
    """(artifact, seconds it took to build), from the cache when there."""
    blob_path, cfg_path = study.cache / f"{key}.safetensors", study.cache / f"{key}.json"
    if blob_path.is_file() and cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        return SourceArtifact.loads(blob_path.read_bytes(), cfg), float(cfg.get("build_s", float("nan")))
    study.log(f"building artifact {key}")
    t0 = time.perf_counter()
    art = build()
    seconds = time.perf_counter() - t0
    blob, cfg = art.dumps()
    cfg["build_s"] = seconds
    cfg["built_at_commit"] = git_commit()
    study.cache.mkdir(parents=True, exist_ok=True)
    blob_path.write_bytes(blob)
    cfg_path.write_text(json.dumps(cfg))
    study.log(f"built {key} in {seconds:.1f} s")
    return art, seconds


def artifacts_for(study: Study, model: str, target: str) -> tuple[list[SourceArtifact], dict[str, float]]:
    args = study.args
    sources = [s for s in args.sources if s != target]
    params = study.ap.to_json()
    arts: list[SourceArtifact] = []
    times: dict[str, float] = {}
    builds: dict[str, Callable[[], SourceArtifact]] = {}
    seed = args.artifact_seed
    if "msta" in args.strategies:
        for s in sources:
            builds[f"{model}_msta_{s}_{params_hash(study.ap, 'msta', seed)}"] = _builder(
                model, "msta", {s: study.sites[s].train}, params, seed
            )
    if "encoder" in args.strategies:
        data = {s: study.sites[s].train for s in sources}
        builds[f"{model}_encoder_{'+'.join(sources)}_{params_hash(study.ap, 'encoder', seed)}"] = _builder(
            model, "encoder", data, params, seed
        )
    for key, build in builds.items():
        art, times[key] = cached_artifact(study, key, build)
        arts.append(art)
    return arts, times


def _builder(
    model: str, strategy: str, data: dict[str, FingerprintSet], params: dict[str, Any], seed: int
) -> Callable[[], SourceArtifact]:
    return lambda: make_source_artifact(model, strategy, data, params, seed=seed)


# ---------------------------------------------------------------- one run


class TestCurve:
    """Test-set mean error after every epoch (reported only, never used to choose anything)."""

    def __init__(self, net: SpecialisedNet, data: TrainData, labels: SiteLabels, out: list[float]) -> None:
        self.net, self.data, self.labels, self.out = net, data, labels, out
        self.seconds = 0.0

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> bool:
        t0 = time.perf_counter()
        self.out.append(round(score_net(self.net, self.data, self.labels, 0.0).mean_m, 4))
        self.net.train()
        self.seconds += time.perf_counter() - t0
        return False


def run_one(
    study: Study, model: str, target: str, repeat: int, arts: list[SourceArtifact], full_data: bool = False
) -> dict[str, Any]:
    """One repeat: scratch and every strategy on a seeded fraction of the target's training data.
    `full_data`: instead scratch alone on all of it (seed `--seed`), the reference for how much
    any method could gain from knowing more than the fraction shows (reported as "ceiling")."""
    args = study.args
    fraction = 1.0 if full_data else args.ilc_fraction if target in ILC_SITES else args.uji_fraction
    seed = args.seed + max(repeat, 0)
    train, test = small_train(study.sites[target], fraction, seed)
    prep = prepare(model, train, study.ap.net, seed, "cpu")
    xy, floor, building = prep.labels.encode(test)
    test_data = TrainData.from_arrays(features(test.rss, test.age_ms, prep.p), xy, floor, building, prep.device)
    curves: dict[str, list[float]] = {}
    timers: dict[str, list[TestCurve]] = {}

    def callbacks_for(name: str) -> list[Callable[[SpecialisedNet], Callback]]:
        def make(net: SpecialisedNet) -> Callback:
            cb = TestCurve(net, test_data, prep.labels, curves.setdefault(name, []))
            timers.setdefault(name, []).append(cb)
            return cb

        return [make]

    names = ["scratch"] if full_data else ["scratch", *[s for s in METHODS[1:] if s in args.strategies]]
    cands = train_candidates(prep, names, arts, study.ap, callbacks_for=callbacks_for)
    cls = net_class(model)
    run: dict[str, Any] = {
        "model": model,
        "target": target,
        "repeat": repeat,
        "full_data": full_data,
        "seed": seed,
        "fraction": fraction,
        "n_train": len(train),
        "n_fit": len(prep.fit),
        "n_holdout": len(prep.hold) if prep.hold else 0,
        "n_test": len(test),
        "n_aps": len(train.aps),
        "git_commit": git_commit(),  # where this run was measured (runs of one study may span sessions)
        "cpu": cpu_info(),
        "methods": {},
    }
    for name, cand in cands.items():
        t0 = time.perf_counter()
        fitted = finalize(cls, cand, prep, {})
        refit_s = time.perf_counter() - t0
        m = metrics(fitted.predict(QueryBatch.from_set(test)), test)
        curve_s = sum(cb.seconds for cb in timers.get(name, []))
        run["methods"][name] = {
            **{k: m[k] for k in METRIC_KEYS},
            "holdout": cand.holdout.to_json() if cand.holdout else None,
            "best_epoch": cand.best_epoch,
            "epochs_run": cand.epochs_run,
            "train_s": round(cand.seconds - curve_s, 2),
            "refit_s": round(refit_s, 2),
            "test_curve": curves.get(name, []),
            **{k: v for k, v in cand.extra.items() if k != "sources"},
        }
    for name in names[1:]:
        run["methods"][name]["kept"] = choose(cands, name, True)
    add_convergence(run)
    return run


def add_convergence(run: dict[str, Any]) -> None:
    ms = run["methods"]
    s = ms["scratch"]
    if not s["test_curve"]:
        return
    goal = s["test_curve"][max(s["best_epoch"], 1) - 1]
    run["scratch_final_test_mean_m"] = goal
    for m in ms.values():
        hit = [i + 1 for i, v in enumerate(m["test_curve"]) if v <= goal]
        m["epochs_to_scratch_final"] = hit[0] if hit else None


# ---------------------------------------------------------------- summary


def summarize(runs: list[dict[str, Any]], strategies: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    keys = sorted({(r["model"], r["target"]) for r in runs}, key=lambda k: (k[0], ALL_SITES.index(k[1])))
    for model, target in keys:
        mine = [r for r in runs if r["model"] == model and r["target"] == target]
        rs = [r for r in mine if not r.get("full_data")]
        full = [r for r in mine if r.get("full_data")]
        cell: dict[str, Any] = {"repeats": len(rs), "n_train": _mean([r["n_train"] for r in rs])}
        base = np.array([r["methods"]["scratch"]["mean_m"] for r in rs])
        if full:
            f = full[-1]["methods"]["scratch"]
            cell["full_data"] = {k: f[k] for k in METRIC_KEYS} | {"n_train": full[-1]["n_train"]}
            if len(rs):  # how much lower than the small-data scratch mean: what any transfer could hope for
                cell["full_data"]["ceiling_gain_pct"] = float(100.0 * (base.mean() - f["mean_m"]) / base.mean())
        if not rs:
            out[f"{model}/{target}"] = cell
            continue
        for method in ["scratch", *strategies, *[f"{s}_kept" for s in strategies]]:
            rows = [_method_row(r, method) for r in rs]
            present = [x for x in rows if x is not None]
            if len(present) == len(rows):
                cell[method] = _stats(present, base)
        out[f"{model}/{target}"] = cell
    return out


def _method_row(run: dict[str, Any], method: str) -> dict[str, Any] | None:
    ms = run["methods"]
    if method.endswith("_kept"):
        strat = method[: -len("_kept")]
        return ms[ms[strat]["kept"]] if strat in ms else None
    return ms.get(method)


def _stats(rows: list[dict[str, Any]], base: np.ndarray) -> dict[str, Any]:
    st: dict[str, Any] = {}
    for k in METRIC_KEYS:
        v = np.array([r[k] for r in rows], dtype=np.float64)
        st[k] = {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
    mean = np.array([r["mean_m"] for r in rows])
    paired = 100.0 * (base - mean) / base
    st["gain_pct_of_means"] = float(100.0 * (base.mean() - mean.mean()) / base.mean())
    st["paired_gain_pct"] = {"mean": float(paired.mean()), "std": float(paired.std(ddof=1)) if len(rows) > 1 else 0.0}
    reach = [r.get("epochs_to_scratch_final") for r in rows]
    got = [e for e in reach if e is not None]
    st["epochs_to_scratch_final"] = {"mean": _mean(got), "reached": f"{len(got)}/{len(reach)}"}
    st["best_epoch"] = _mean([r["best_epoch"] for r in rows])
    st["train_s"] = _mean([r["train_s"] for r in rows])
    st["refit_s"] = _mean([r["refit_s"] for r in rows])
    return st


def _mean(v: Sequence[float]) -> float | None:
    return float(np.mean(v)) if len(v) else None


LABELS = {
    "scratch": "",
    "encoder": " + encoder",
    "msta": " + MSTA",
    "encoder_kept": " + encoder (kept)",
    "msta_kept": " + MSTA (kept)",
}
MODEL_LABELS = {"dnn": "DNN", "cnnloc": "CNNLoc"}


def markdown(summary: dict[str, Any], models: Sequence[str], targets: Sequence[str], strategies: Sequence[str]) -> str:
    lines = []
    groups = [[t for t in targets if t not in ILC_SITES], [t for t in targets if t in ILC_SITES]]
    for group in [g for g in groups if g]:
        head = "| Method | " + " | ".join(f"{t} MAE (m) | P75 | P95" for t in group) + " |"
        lines += [head, "|---|" + "---:|---:|---:|" * len(group)]
        for model in models:
            for method in ["scratch", *strategies, *[f"{s}_kept" for s in strategies]]:
                cells = []
                for t in group:
                    st = summary.get(f"{model}/{t}", {}).get(method)
                    cells.append(_cells(st, method) if st else "– | – | –")
                lines.append(f"| {MODEL_LABELS[model]}{LABELS[method]} | " + " | ".join(cells) + " |")
            full = [summary.get(f"{model}/{t}", {}).get("full_data") for t in group]
            if any(full):
                cells = [_full_cells(f) if f else "– | – | –" for f in full]
                label = f"{MODEL_LABELS[model]} on all the target's data (ceiling)"
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += _convergence_table(summary, models, targets, strategies)
    return "\n".join(lines) + "\n"


def _cells(st: dict[str, Any], method: str) -> str:
    m = st["mean_m"]
    mae = f"{m['mean']:.2f} ± {m['std']:.2f}"
    if method != "scratch":
        g = st["gain_pct_of_means"]
        mae += f" ({abs(g):.1f}% {'↑' if g >= 0 else '↓'})"
    return f"{mae} | {st['p75_m']['mean']:.2f} | {st['p95_m']['mean']:.2f}"


def _full_cells(f: dict[str, Any]) -> str:
    mae = f"{f['mean_m']:.2f}"
    if "ceiling_gain_pct" in f:
        g = f["ceiling_gain_pct"]
        mae += f" ({abs(g):.1f}% {'↑' if g >= 0 else '↓'})"
    return f"{mae} | {f['p75_m']:.2f} | {f['p95_m']:.2f}"


def _convergence_table(
    summary: dict[str, Any], models: Sequence[str], targets: Sequence[str], strategies: Sequence[str]
) -> list[str]:
    lines = [
        "| Model | Target | repeats | Method | epochs to scratch's final test error (reached) | best epoch | "
        "train s | refit s |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for model in models:
        for t in targets:
            cell = summary.get(f"{model}/{t}")
            if not cell:
                continue
            for method in ["scratch", *strategies]:
                st = cell.get(method)
                if not st:
                    continue
                e = st["epochs_to_scratch_final"]
                reach = f"{e['mean']:.0f} ({e['reached']})" if e["mean"] is not None else f"never ({e['reached']})"
                lines.append(
                    f"| {MODEL_LABELS[model]} | {t} | {cell['repeats']} | {method} | {reach} | "
                    f"{st['best_epoch']:.0f} | {st['train_s']:.1f} | {st['refit_s']:.1f} |"
                )
    return lines


# ---------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default=",".join(ALL_SITES), help="comma-separated target sites")
    ap.add_argument("--sources", default=",".join(ALL_SITES), help="sites that may serve as sources")
    ap.add_argument("--models", default="dnn,cnnloc")
    ap.add_argument("--strategies", default="encoder,msta")
    ap.add_argument("--uji-fraction", type=float, default=0.1, help="fraction of a UJI building's training rows")
    ap.add_argument("--ilc-fraction", type=float, default=0.25, help="fraction of an ILC site's training paths")
    ap.add_argument("--uji-repeats", type=int, default=10)
    ap.add_argument("--ilc-repeats", type=int, default=1)
    ap.add_argument("--params", type=json.loads, default={}, help="JSON object: dnn/cnnloc and transfer params")
    ap.add_argument(
        "--full-data",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also train scratch once on all of each target's training data (the 'ceiling' row)",
    )
    ap.add_argument("--seed", type=int, default=0, help="repeat r uses seed + r (data subset and training)")
    ap.add_argument("--artifact-seed", type=int, default=0, help="seed of the source artifacts (fixed across repeats)")
    ap.add_argument("--data-dir", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("bench-out/transfer"))
    ap.add_argument("--cache", type=Path, default=Path(".bench-cache/transfer"))
    ap.add_argument("--tag", default="")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--summary-only", action="store_true", help="train nothing: tables from the runs file")
    ap.add_argument("--unified", action="store_true", help="instead: the U-MLP site-detection run on --sources")
    args = ap.parse_args(list(argv))
    for name in ("targets", "sources", "models", "strategies"):
        setattr(args, name, [v for v in getattr(args, name).split(",") if v])
    bad = [t for t in args.targets + args.sources if t not in ALL_SITES]
    bad += [m for m in args.models if m not in MODEL_LABELS] + [s for s in args.strategies if s not in METHODS[1:]]
    if bad:
        ap.error(f"unknown site/model/strategy: {', '.join(bad)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    commit = git_commit()  # the code that trains, not whatever is checked out when a long study ends
    torch.set_num_threads(args.threads)
    data_dir = resolve_data_dir(args.data_dir)
    ap = split_params(args.params)
    log = _logger()
    needed = sorted(set(args.sources) | (set() if args.unified else set(args.targets)), key=ALL_SITES.index)
    sites = {s: load_site(s, data_dir, args.cache / "sites") for s in needed}
    study = Study(args, ap, sites, args.cache / "artifacts", log)
    stem = f"transfer{'_' + args.tag if args.tag else ''}"
    args.out.mkdir(parents=True, exist_ok=True)
    runs_path = args.out / f"{stem}_runs.jsonl"
    if args.unified:
        result = {
            "command": shlex.join(["python", "-m", "bench.transfer", *argv]),
            "git_commit": commit,
            "machine": machine(),
            "params": asdict(ap.net),
            **run_unified(study),
        }
        (args.out / f"{stem}_unified.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / f"{stem}_unified.md").write_text(unified_markdown(result))
        print(f"wrote {args.out / stem}_unified.json and .md: site accuracy {result['site_accuracy']:.4f}", flush=True)
        return 0
    runs = _read_runs(runs_path)
    artifact_s = cached_build_times(study) if args.summary_only else run_study(study, runs, runs_path)
    wanted = [r for r in runs if r["model"] in args.models and r["target"] in args.targets]
    summary = summarize(wanted, args.strategies)
    result = {
        "command": shlex.join(["python", "-m", "bench.transfer", *argv]),
        "git_commit": commit,
        "machine": machine(),
        "torch_threads": args.threads,
        "params": ap.to_json(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "params"},
        "sites": {
            s: {"n_train": len(d.train), "n_test": len(d.test), "n_aps": len(d.train.aps), "description": d.description}
            for s, d in sites.items()
        },
        "artifact_build_s": artifact_s,
        "summary": summary,
        "runs": wanted,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(summary, args.models, args.targets, args.strategies))
    print(f"wrote {args.out / stem}.json and .md", flush=True)
    return 0


def run_unified(study: Study) -> dict[str, Any]:
    """Paper 003's U-MLP on every study site's full training data: site detection and location on
    each site's test set (the site comes from the model, the position is scored in that site)."""
    from ml.transfer_unified import UnifiedModel

    names = list(study.sites)
    t0 = time.perf_counter()
    model = UnifiedModel.fit({s: study.sites[s].train for s in names}, asdict(study.ap.net), seed=study.args.seed)
    train_s = time.perf_counter() - t0
    per_site: dict[str, Any] = {}
    for i, s in enumerate(names):
        test = study.sites[s].test
        q = QueryBatch.from_set(test.with_aps(model.aps))
        site, xy, floor = model.locate(q)
        ok = site == i
        err = np.hypot(*(xy - test.xy).T)
        per_site[s] = {
            "n_test": len(test),
            "site_accuracy": float(ok.mean()),
            "detected_as": {names[j]: int((site == j).sum()) for j in np.unique(site)},
            "mean_m_when_detected": float(err[ok].mean()) if ok.any() else None,
            "floor_hit_when_detected": float(np.mean(floor[ok].astype(str) == test.floor[ok].astype(str)))
            if ok.any()
            else None,
        }
    n = sum(v["n_test"] for v in per_site.values())
    return {
        "sites": names,
        "n_aps_union": len(model.aps),
        "train_s": round(train_s, 1),
        "training": model.training,
        "site_accuracy": sum(v["site_accuracy"] * v["n_test"] for v in per_site.values()) / n,
        "per_site": per_site,
    }


def unified_markdown(result: dict[str, Any]) -> str:
    lines = [
        "| site | test scans | site detected | detected as | mean error when detected (m) | floor hit when detected |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for s, v in result["per_site"].items():
        seen = ", ".join(f"{k} {n}" for k, n in v["detected_as"].items())
        mean = f"{v['mean_m_when_detected']:.2f}" if v["mean_m_when_detected"] is not None else "–"
        floor = f"{100 * v['floor_hit_when_detected']:.1f}%" if v["floor_hit_when_detected"] is not None else "–"
        lines.append(f"| {s} | {v['n_test']:,} | {100 * v['site_accuracy']:.1f}% | {seen} | {mean} | {floor} |")
    n = sum(v["n_test"] for v in result["per_site"].values())
    lines.append(f"| all | {n:,} | {100 * result['site_accuracy']:.1f}% | | | |")
    lines += ["", f"{result['n_aps_union']:,} APs in the union vocabulary; trained {result['train_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def cached_build_times(study: Study) -> dict[str, float]:
    """Build seconds of the cached artifacts (for a summary of earlier runs)."""
    out = {}
    for path in sorted(study.cache.glob("*.json")) if study.cache.is_dir() else []:
        out[path.stem] = float(json.loads(path.read_text()).get("build_s", float("nan")))
    return out


def run_study(study: Study, runs: list[dict[str, Any]], runs_path: Path) -> dict[str, float]:
    """Artifacts first, then repeat by repeat over every target (partial results cover every target)."""
    args, log = study.args, study.log
    artifact_s: dict[str, float] = {}
    arts: dict[tuple[str, str], list[SourceArtifact]] = {}
    for model in args.models:
        for target in args.targets:
            arts[model, target], times = artifacts_for(study, model, target)
            artifact_s.update(times)
    if args.full_data:
        for model in args.models:
            for target in args.targets:
                if any(x["model"] == model and x["target"] == target and x.get("full_data") for x in runs):
                    continue
                log(f"{model} {target} on all its training data")
                run = run_one(study, model, target, -1, [], full_data=True)  # repeat -1: never a repeat's
                runs.append(run)
                _append(runs_path, run)
                log(_headline(run))
    for r in range(max(args.uji_repeats, args.ilc_repeats)):
        for model in args.models:
            for target in args.targets:
                repeats = args.ilc_repeats if target in ILC_SITES else args.uji_repeats
                done = any(x["model"] == model and x["target"] == target and x["repeat"] == r for x in runs)
                if r >= repeats or done:
                    continue
                log(f"{model} {target} repeat {r}")
                run = run_one(study, model, target, r, arts[model, target])
                runs.append(run)
                _append(runs_path, run)
                log(_headline(run))
    return artifact_s


def _append(path: Path, run: dict[str, Any]) -> None:
    """One JSON line, under an exclusive lock (several study processes may share the file)."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(run) + "\n")
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)


def _read_runs(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _headline(run: dict[str, Any]) -> str:
    parts = [
        f"{k} {v['mean_m']:.2f} m (epoch {v['best_epoch']}, {v['train_s']:.0f} s)" for k, v in run["methods"].items()
    ]
    return f"  {run['model']} {run['target']} r{run['repeat']}: " + ", ".join(parts)


def _logger() -> Callable[[str], None]:
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:7.0f} s] {msg}", file=sys.stderr, flush=True)

    return log


if __name__ == "__main__":
    raise SystemExit(main())
