"""Co-training benchmark (issue 5): does one update from unlabeled later queries help, and does the guard hold?

    python -m bench.cotrain uji --split phone     # validationData halves by phone (other phones, months later)
    python -m bench.cotrain uji --split random    # validationData halves at random
    python -m bench.cotrain ilc --site site1 --floor F1   # earliest paths survey, later paths as queries

The protocol is the service's (`app/services/training.py` and `app/services/cotrain.py`), run in-process:

1. The survey is split into fit rows and a labeled holdout (whole paths, else rows; `--holdout-fraction`, the
   service default 0.2), as `POST /sites/{id}/finetune` does. `itoloc` is trained on the fit rows.
2. The later data (UJI: validationData; ILC: the latest `--later-fraction` of the floor's paths by first scan time)
   is split in two disjoint halves: A is streamed as unlabeled queries (their labels are never read), B is only
   scored. UJI `--split phone` puts whole phones in A or B, `--split random` rows.
3. One update (`model.cotrain(fit rows, A)`, the worker's call) gives a candidate. The guard is the service's: the
   candidate replaces the active model only if its holdout mean error is at most (1 + tolerance) x the active one's
   and its floor hit does not fall by more than the tolerance.
4. Reported: error on B and on the holdout before and after, the guard's decision, what is served with the guard on
   (the candidate if promoted, else the old model) and with it off (always the candidate), and the update summary.

The trained model is cached under `<out>/.cache/` (keyed by data, split, params, seed and a digest of `ml/`'s
code), so re-running with other co-training settings does not retrain it. Results: `<out>/cotrain_<name>.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.core import (
    BenchError,
    _json_default,
    _json_object,
    git_commit,
    load_floor,
    machine,
    resolve_data_dir,
    site_floors,
    source_digest,
    time_split,
)
from ml.cotrain import holdout_guard
from ml.data.features import build_set
from ml.data.splits import holdout_split, split_by_group
from ml.evaluate import metrics
from ml.models import get_model_class
from ml.models.base import LocModel, QueryBatch
from ml.selfupdate import UpdateConfig, learn
from ml.serialize import dumps, loads
from ml.types import Fingerprint

KEYS = ("n", "mean_m", "median_m", "p75_m", "p95_m", "floor_hit", "building_hit")


def survey_holdout(fps: list[Fingerprint], fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The finetune job's split (`ml.data.splits.holdout_split`, as `ml.finetune` makes it): (fit, holdout) rows."""
    fit_idx, hold_idx, _ = holdout_split(build_set(fps), fraction, seed)
    return fit_idx, hold_idx


def halves(later: list[Fingerprint], by: str, seed: int) -> tuple[list[Fingerprint], list[Fingerprint]]:
    """(A streamed, B scored): whole phones / whole paths / rows, seeded."""
    if by == "phone":
        groups = [str(fp.device) for fp in later]
    elif by == "path":
        groups = [str(fp.path) for fp in later]
    else:
        groups = [f"row{i}" for i in range(len(later))]
    if len(set(groups)) < 2:
        raise BenchError(f"cannot split the later data by {by}: only one group")
    a_idx, b_idx = split_by_group(groups, 0.5, seed)
    return [later[i] for i in a_idx], [later[i] for i in b_idx]


def score(model: LocModel, fps: list[Fingerprint]) -> dict[str, Any]:
    fs = build_set(fps, model.aps)
    m = metrics(model.predict(QueryBatch.from_set(fs)), fs)
    return {k: m[k] for k in KEYS if k in m}


def trained_model(
    name: str,
    survey: list[Fingerprint],
    holdout: np.ndarray,
    params: dict[str, Any],
    seed: int,
    cache: Path,
    key: str,
    verbose: bool,
) -> tuple[LocModel, float | None]:
    """The finetune job's fit: the survey minus its holdout trained on, the holdout for the model's selection."""
    code = source_digest("ml/**/*.py")  # a model trained by older code is never reused
    digest = hashlib.sha256(json.dumps([name, key, params, seed, code], sort_keys=True).encode()).hexdigest()[:16]
    blob, cfg = cache / f"{digest}.safetensors", cache / f"{digest}.json"
    if blob.exists() and cfg.exists():
        print(f"  using the cached model {blob}", file=sys.stderr, flush=True)
        return loads(blob.read_bytes(), json.loads(cfg.read_text())), None

    def progress(fraction: float, message: str) -> None:
        if verbose:
            print(f"  [{fraction:4.0%}] {message}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    model = get_model_class(name).fit(build_set(survey), params, holdout=holdout, seed=seed, progress=progress)
    train_s = time.perf_counter() - t0
    cache.mkdir(parents=True, exist_ok=True)
    weights, config = dumps(model)
    blob.write_bytes(weights)
    cfg.write_text(json.dumps(config, default=_json_default))
    return model, train_s


def run_study(
    name: str,
    description: str,
    survey: list[Fingerprint],
    later: list[Fingerprint],
    split_by: str,
    args: argparse.Namespace,
    command: str,
    survey_key: str,
) -> dict[str, Any]:
    fit_idx, hold_idx = survey_holdout(survey, args.holdout_fraction, args.seed)
    fit, hold = [survey[i] for i in fit_idx], [survey[i] for i in hold_idx]
    a, b = halves(later, split_by, args.seed)
    if not fit or not hold or not a or not b:
        raise BenchError(f"{name}: an empty part (fit {len(fit)}, holdout {len(hold)}, A {len(a)}, B {len(b)})")
    print(
        f"{name}: fit {len(fit)}, holdout {len(hold)}, queries A {len(a)}, scored B {len(b)}",
        file=sys.stderr,
        flush=True,
    )
    key = f"{survey_key}|{args.holdout_fraction}|{len(fit)}"  # the survey, not how the later data is split
    model, train_s = trained_model(
        args.model, survey, hold_idx, args.params, args.seed, args.out / ".cache", key, args.verbose
    )
    before = {"B": score(model, b), "holdout": score(model, hold), "A": score(model, a)}

    def progress(fraction: float, message: str) -> None:
        if args.verbose:
            print(f"  [{fraction:4.0%}] {message}", file=sys.stderr, flush=True)

    # what the worker sees of a stored query: the scan, the phone, the time; no position
    queries = [
        Fingerprint(fp.wifi, float("nan"), float("nan"), "", device=fp.device, timestamp=fp.timestamp) for fp in a
    ]
    t0 = time.perf_counter()
    if model.supports_cotrain:
        new, summary = model.cotrain(
            build_set(fit, model.aps), build_set(queries), args.cotrain_params, seed=args.seed, progress=progress
        )
    else:
        # any other model: the self-maintenance update with single queries only (no sessions here), its own
        # confident answers as pseudo-labels; the candidate scored like the model above (holdout never fitted)
        cfg, rest = UpdateConfig.split_params({"single_query_labels": "self", **args.cotrain_params})
        cand = learn(model, [], queries, survey, hold_idx, None, cfg, rest, seed=args.seed, progress=progress)
        new = cand.scored if cand is not None else model
        summary = cand.summary if cand is not None else {"n_pseudo_labels": 0}
    update_s = time.perf_counter() - t0
    after = {"B": score(new, b), "holdout": score(new, hold), "A": score(new, a)}
    promoted, reason = holdout_guard(before["holdout"], after["holdout"], args.tolerance)  # the service's guard
    guarded = after if promoted else before

    def change(x: dict[str, Any]) -> float:
        return 100.0 * (x["B"]["mean_m"] - before["B"]["mean_m"]) / before["B"]["mean_m"]

    result = {
        "name": name,
        "dataset": description,
        "model": args.model,
        "params": args.params,
        "cotrain_params": args.cotrain_params,
        "seed": args.seed,
        "split": split_by,
        "tolerance": args.tolerance,
        "n_fit": len(fit),
        "n_holdout": len(hold),
        "n_queries_A": len(a),
        "n_scored_B": len(b),
        "train_time_s": train_s,
        "update_time_s": update_s,
        "before": before,
        "after": after,
        "guard": {"promoted": promoted, "reason": reason},
        "served_guard_on": guarded,
        "served_guard_off": after,
        "B_mean_change_pct_guard_on": change(guarded),
        "B_mean_change_pct_guard_off": change(after),
        "holdout_mean_change_pct": 100.0
        * (after["holdout"]["mean_m"] - before["holdout"]["mean_m"])
        / before["holdout"]["mean_m"],
        "summary": summary,
        "command": command,
        "git_commit": git_commit(),
        "machine": machine(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tag = f"_{args.tag}" if args.tag else ""
    path = args.out / f"cotrain_{name}{tag}.json"
    path.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    print(
        f"wrote {path}: B {before['B']['mean_m']:.2f} -> {after['B']['mean_m']:.2f} m "
        f"({result['B_mean_change_pct_guard_off']:+.1f}%), holdout {before['holdout']['mean_m']:.2f} -> "
        f"{after['holdout']['mean_m']:.2f} m, {reason}",
        flush=True,
    )
    return result


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model", default="itoloc", help="itoloc co-trains; any other model runs the single-query self-update"
    )
    common.add_argument("--params", type=_json_object, default={}, help="JSON object for the model's fit")
    common.add_argument(
        "--cotrain-params",
        type=_json_object,
        default={},
        help="JSON object for the update (ml.cotrain.CotrainConfig; other models ml.selfupdate.UpdateConfig)",
    )
    common.add_argument("--holdout-fraction", type=float, default=0.2, help="survey holdout (service default 0.2)")
    common.add_argument("--tolerance", type=float, default=0.02, help="the guard's tolerance (service default 0.02)")
    common.add_argument("--data-dir", type=Path, default=None, help="default: ../shared/data")
    common.add_argument("--out", type=Path, default=Path("bench-out"))
    common.add_argument("--seed", type=int, default=0)
    common.add_argument("--tag", default="")
    common.add_argument("-v", "--verbose", action="store_true")
    parser = argparse.ArgumentParser(prog="python -m bench.cotrain", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="dataset", required=True)
    uji = sub.add_parser("uji", parents=[common], help="trainingData survey; validationData halves A/B")
    uji.add_argument("--split", choices=("phone", "random"), default="phone")
    ilc = sub.add_parser("ilc", parents=[common], help="earliest paths survey; later paths halves A/B")
    ilc.add_argument("--site", default="site1")
    ilc.add_argument("--floor", default="F1", help="a floor, or 'together' for all floors of the site")
    ilc.add_argument("--later-fraction", type=float, default=0.5, help="latest fraction of each floor's paths")
    args = parser.parse_args(list(argv))
    if not 0 < args.holdout_fraction < 1:
        parser.error("--holdout-fraction must be in (0, 1)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    git_commit()  # the code that runs, not what is checked out when a long run ends (cached for the process)
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "bench.cotrain", *argv])
    try:
        data_dir = resolve_data_dir(args.data_dir)
        args.out.mkdir(parents=True, exist_ok=True)
        if args.dataset == "uji":
            from ml.data.ujiindoorloc import load_uji

            survey, later = load_uji(data_dir, "train"), load_uji(data_dir, "validation")
            desc = f"UJIIndoorLoc trainingData survey; validationData halves by {args.split}"
            run_study(f"uji_{args.split}", desc, survey, later, args.split, args, command, "uji")
        else:
            floors = site_floors(data_dir)
            if args.site not in floors:
                raise BenchError(f"unknown site {args.site!r}; have {', '.join(sorted(floors))}")
            chosen = floors[args.site] if args.floor == "together" else [args.floor]
            survey, later = [], []
            for floor in chosen:
                if floor not in floors[args.site]:
                    raise BenchError(f"unknown floor {floor!r}; have {', '.join(floors[args.site])}, together")
                s, lt = time_split(list(load_floor(data_dir, args.site, floor)), args.later_fraction)
                survey += s
                later += lt
            desc = (
                f"ILC {args.site}/{args.floor}: earliest {1 - args.later_fraction:g} of the paths survey, "
                f"the later paths split in halves by path"
            )
            name = f"ilc_{args.site}_{args.floor}"
            run_study(name, desc, survey, later, "path", args, command, f"{name}|{args.later_fraction}")
    except (BenchError, FileNotFoundError, ValueError) as exc:
        print(f"python -m bench.cotrain: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
