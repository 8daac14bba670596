"""Regenerate the tables of docs/benchmarks/README.md from the JSON files the benchmarks wrote.

    python -m bench.report [docs/benchmarks/README.md] [--bench-out DIR ...] [--check]

Every table in the document sits between a marker line and `<!-- /bench-table -->`:

    <!-- bench-table: KIND PATTERN [PATTERN ...] -->
    | ... generated ... |
    <!-- /bench-table -->

KIND is one of `accuracy`, `latency`, `detect`, `import`, `load`, `load_cpu`, `cotrain`, `selfmaint`, `mtloc_goal`,
`mtloc_fractions`, `mtloc_wipe`, `wknn_query`; each PATTERN is a glob under the result folders (in the order
given; matches of one pattern sorted by name). The folders are `bench-out/` (what the benchmark commands write)
and `docs/benchmarks/results/` (committed copies of the JSON files behind the published tables, so that a fresh
clone can check and regenerate them); a file in `bench-out/` wins over its committed copy. The numbers are copied
from the JSON files, never typed: re-run the command in a row, then this script, and the table follows. `--check`
exits 1 when the document is not what the JSON files say (missing files are reported, not invented; a table for
which any pattern matches no file here is left as it is, so that a partial set of results never drops rows).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER = re.compile(r"^<!-- bench-table: (\w+) (.+?) -->$")
END = "<!-- /bench-table -->"


def _f(v: Any, digits: int = 2) -> str:
    return "–" if v is None or (isinstance(v, float) and v != v) else f"{v:,.{digits}f}"


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _n(v: Any) -> str:
    return "–" if v is None else f"{int(v):,}"


def label(name: str) -> str:
    """bench-out file stem -> a readable run label."""
    m = re.match(r"ilc_(site\d)_(\w+?)(_time)?(?:_train([\d.]+))?_(\w+?)(?:_(.+))?$", name)
    if m:
        site, floor, time_split, frac, _model, tag = m.groups()
        floor_txt = "all floors (floor classification)" if floor == "allfloors" else floor
        return (
            f"{site} {floor_txt}"
            + (", later paths" if time_split else "")
            + (f", {float(frac):.0%} of training paths" if frac else "")
            + (f" ({tag})" if tag else "")
        )
    return name


def settings(d: dict[str, Any]) -> str:
    """The model's chosen settings, briefly."""
    p = (d.get("model_config") or {}).get("params") or {}
    if d.get("model") == "wknn" and p:
        age = p.get("max_age_ms")
        age_txt = "none" if age is None else f"{age / 1000:g} s"
        return (
            f"{p['representation']}/{p['distance']}, k={p['k']}, k_b={p['k_building']}, k_f={p['k_floor']}, "
            f"{p['weighting']}, max_age={age_txt}"
        )
    summary = (d.get("model_config") or {}).get("summary") or d.get("params") or {}
    return ", ".join(f"{k}={v}" for k, v in summary.items()) if isinstance(summary, dict) else str(summary)


def _cmd(d: dict[str, Any]) -> str:
    return f"`{d.get('command', '?')}`"


def accuracy(rows: list[dict[str, Any]]) -> list[str]:
    head = [
        "run",
        "model",
        "n train / test",
        "mean (m)",
        "median",
        "P75",
        "P95",
        "floor hit",
        "building hit",
        "error_m Spearman",
        "train (s)",
        "chosen settings",
        "command",
    ]
    out = [
        _row(head),
        _row(["---", "---", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "---", "---"]),
    ]
    for d in rows:
        m = d.get("metrics") or {}
        out.append(
            _row(
                [
                    label(d["name"]),
                    d.get("model", "?"),
                    f"{_n(d.get('n_train'))} / {_n(d.get('n_test'))}",
                    _f(m.get("mean_m")),
                    _f(m.get("median_m")),
                    _f(m.get("p75_m")),
                    _f(m.get("p95_m")),
                    _pct(m.get("floor_hit")),
                    _pct(m.get("building_hit")),
                    _f(m.get("error_estimate_spearman")),
                    _f(d.get("train_time_s"), 1),
                    settings(d),
                    _cmd(d),
                ]
            )
        )
    return out


def latency(rows: list[dict[str, Any]]) -> list[str]:
    head = [
        "run",
        "fingerprints matched",
        "single-query p50 (ms)",
        "p95 (ms)",
        "batch size",
        "batch throughput (queries/s)",
        "load avg (1 min) at end",
        "command",
    ]
    out = [_row(head), _row(["---", "--:", "--:", "--:", "--:", "--:", "--:", "---"])]
    for d in rows:
        lat = d.get("latency") or {}
        out.append(
            _row(
                [
                    d["name"],
                    _n(lat.get("n_train_fingerprints")),
                    _f(lat.get("single_query_p50_ms")),
                    _f(lat.get("single_query_p95_ms")),
                    _n(lat.get("batch_size")),
                    _n(lat.get("batch_queries_per_s")),
                    _f((d.get("machine") or {}).get("load_average_1m")),
                    _cmd(d),
                ]
            )
        )
    return out


def detect(rows: list[dict[str, Any]]) -> list[str]:
    head = [
        "test scans",
        "accuracy",
        "no match",
        "per site",
        "distance tie-breaks",
        "mean time per scan (ms)",
        "command",
    ]
    out = [_row(head), _row(["--:", "--:", "--:", "---", "--:", "--:", "---"])]
    for d in rows:
        per = d.get("per_site_accuracy") or {}
        per_txt = ", ".join(f"{k} {_pct(v.get('accuracy') if isinstance(v, dict) else v)}" for k, v in per.items())
        out.append(
            _row(
                [
                    _n(d.get("n_test")),
                    _pct(d.get("accuracy")),
                    _pct(d.get("no_match_rate")),
                    per_txt,
                    _n(d.get("tie_breaks")),
                    _f(d.get("mean_detect_ms"), 3),
                    _cmd(d),
                ]
            )
        )
    return out


def imports(rows: list[dict[str, Any]]) -> list[str]:
    head = [
        "archive",
        "MB (.tar.xz)",
        "scan fingerprints",
        "sensor windows",
        "paths",
        "window stride (ms)",
        "wall (s)",
        "fingerprints/s",
        "windows/s",
        "MB/s",
        "server peak RSS (MiB)",
        "command",
    ]
    out = [_row(head), _row(["---", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "---"])]
    for d in rows:
        for u in d.get("uploads", []):
            out.append(
                _row(
                    [
                        u["archive"],
                        _f(u["archive_mb"]),
                        _n(u["fingerprints"]),
                        _n(u["windows"]),
                        _n(u["paths"]),
                        _n(u["window_stride_ms"]),
                        _f(u["wall_s"], 1),
                        _n(u["fingerprints_per_s"]),
                        _n(u["windows_per_s"]),
                        _f(u["archive_mb_per_s"]),
                        _f(u["server_peak_rss_mib"], 0),
                        _cmd(d),
                    ]
                )
            )
    return out


def load(rows: list[dict[str, Any]]) -> list[str]:
    """`bench.locate_load` results: one row per load, siteloc beside the framework ceiling of the same run."""
    head = [
        "mode",
        "API processes",
        "load",
        "requests/s",
        "p50 (ms)",
        "p90",
        "p99",
        "answered 200 / stored",
        "server RSS (MiB)",
        "1 connection p50 / p99 (ms)",
        "ceiling requests/s",
        "ceiling p99 (ms)",
        "ratio",
        "server CPU ms / request (siteloc / ceiling)",
        "load avg",
        "command",
    ]
    align = [
        "---",
        "--:",
        "---",
        "--:",
        "--:",
        "--:",
        "--:",
        "---",
        "--:",
        "---",
        "--:",
        "--:",
        "--:",
        "---",
        "--:",
        "---",
    ]
    out = [_row(head), _row(align)]
    for d in rows:
        for name, r in (d.get("loads") or {}).items():
            lat, one = r.get("latency_ms") or {}, (r.get("one_connection") or {}).get("latency_ms") or {}
            ceil = r.get("ceiling") or {}
            out.append(
                _row(
                    [
                        d.get("mode", "?"),
                        _n(d.get("workers")),
                        name,
                        _n(r.get("requests_per_s")),
                        _f(lat.get("p50"), 1),
                        _f(lat.get("p90"), 1),
                        _f(lat.get("p99"), 1),
                        f"{_n(r.get('answered_200'))} / {_n(r.get('stored'))}",
                        _n(r.get("server_rss_mib")),
                        f"{_f(one.get('p50'), 1)} / {_f(one.get('p99'), 1)}",
                        _n(ceil.get("requests_per_s")),
                        _f((ceil.get("latency_ms") or {}).get("p99"), 1),
                        _f(r.get("ratio_to_ceiling")),
                        f"{_f(r.get('server_cpu_ms_per_request'))} / {_f(ceil.get('server_cpu_ms_per_request'))}",
                        _f(r.get("load_average_1m_before")),
                        _cmd(d),
                    ]
                )
            )
    return out


def load_cpu(rows: list[dict[str, Any]]) -> list[str]:
    """`bench.locate_load` results as per-core figures: the server CPU per stored /locate, beside the framework
    ceiling's of the same run (docs/scaling.md)."""
    head = [
        "load",
        "mode",
        "server CPU ms / request",
        "requests per CPU-second (one core)",
        "framework ceiling, same run (ms / request)",
        "load avg",
    ]
    out = [_row(head), _row(["---", "---", "--:", "--:", "--:", "--:"])]
    for d in rows:
        mode = f"{d.get('mode', '?')}, {_n(d.get('workers'))} processes"
        for name, r in (d.get("loads") or {}).items():
            ceil = r.get("ceiling") or {}
            out.append(
                _row(
                    [
                        name,
                        mode,
                        _f(r.get("server_cpu_ms_per_request")),
                        _n(r.get("requests_per_cpu_second")),
                        _f(ceil.get("server_cpu_ms_per_request")),
                        _f(r.get("load_average_1m_before")),
                    ]
                )
            )
    return out


def _cotrain_label(d: dict[str, Any]) -> str:
    tag = re.search(r"--tag (\S+)", d.get("command", ""))
    return d["name"] + (f", {tag.group(1)}" if tag else "")


def cotrain(rows: list[dict[str, Any]]) -> list[str]:
    head = [
        "run",
        "fit / holdout / queries A / scored B",
        "B mean before (m)",
        "B mean after",
        "B change",
        "holdout mean before",
        "holdout mean after",
        "floor hit B before / after",
        "guard",
        "B change, guard on",
        "pseudo-labels accepted (itoloc: M1, M2, M3)",
        "update (s)",
        "command",
    ]
    out = [
        _row(head),
        _row(["---", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "---", "--:", "--:", "--:", "---"]),
    ]
    for d in rows:
        b, a = d["before"], d["after"]
        out.append(
            _row(
                [
                    _cotrain_label(d),
                    f"{_n(d['n_fit'])} / {_n(d['n_holdout'])} / {_n(d['n_queries_A'])} / {_n(d['n_scored_B'])}",
                    _f(b["B"]["mean_m"]),
                    _f(a["B"]["mean_m"]),
                    f"{d['B_mean_change_pct_guard_off']:+.1f}%",
                    _f(b["holdout"]["mean_m"]),
                    _f(a["holdout"]["mean_m"]),
                    f"{_pct(b['B'].get('floor_hit'))} / {_pct(a['B'].get('floor_hit'))}",
                    "promoted" if d["guard"]["promoted"] else "rejected",
                    f"{d['B_mean_change_pct_guard_on']:+.1f}%",
                    # itoloc: per module; other models' self-update: one count
                    ", ".join(
                        str(v) for v in d["summary"].get("accepted_total", [d["summary"].get("n_pseudo_labels", 0)])
                    ),
                    _f(d.get("update_time_s"), 0),
                    _cmd(d),
                ]
            )
        )
    return out


def _mt_merged(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Runs of one target floor with the same params from several files (e.g. more fractions run later), as one."""
    out: dict[str, dict[str, Any]] = {}
    for d in rows:
        key = json.dumps([d["site"], d["floor"], d.get("params")], sort_keys=True)
        if key not in out:
            out[key] = {**d, "runs": list(d["runs"])}
            continue
        m = out[key]
        have = {(r["strategy"], r["fraction"]) for r in m["runs"]}
        m["runs"] += [r for r in d["runs"] if (r["strategy"], r["fraction"]) not in have]
        order = {st: i for i, st in enumerate(dict.fromkeys(r["strategy"] for r in m["runs"]))}
        m["runs"].sort(key=lambda r: (order[r["strategy"]], r["fraction"]))
        m["command"] = f"{m['command']}`; `{d['command']}"
    return list(out.values())


def _mt_floor(d: dict[str, Any]) -> str:
    blend = (d.get("params") or {}).get("knn_blend", True)
    return f"{d['site']} {d['floor']}" + ("" if blend else " (paper network, knn_blend=false)")


def _mt_run(d: dict[str, Any], strategy: str, fraction: float) -> dict[str, Any] | None:
    return next((r for r in d["runs"] if r["strategy"] == strategy and r["fraction"] == fraction), None)


def _vs(value: Any, base: Any) -> str:
    return "–" if value is None or not base else f"{100 * (value / base - 1):+.1f}%"


def mtloc_goal(rows: list[dict[str, Any]]) -> list[str]:
    """Per target floor: coverage bound, wknn / itoloc and MTLoc on the same test windows, 25% budget."""
    rows = _mt_merged(rows)
    head = [
        "target floor",
        "train paths / test paths (windows)",
        "coverage bound mean / median (m)",
        "wknn mean / median",
        "itoloc mean",
        "MTLoc scratch 100% mean / median (vs wknn)",
        "MTLoc finetune 100% mean / median (vs wknn)",
        "25%: scratch / frozen / finetune mean",
        "command",
    ]
    out = [_row(head), _row(["---", "--:", "--:", "--:", "--:", "--:", "--:", "--:", "---"])]
    for d in rows:
        wk, cb = d["wknn"], d["coverage_bound"]
        runs = {(r["strategy"], r["fraction"]): r["all"] for r in d["runs"]}
        q = [runs.get((s, 0.25), {}).get("mean_m") for s in ("scratch", "frozen", "finetune")]
        cells = []
        for strategy in ("scratch", "finetune"):
            r = runs.get((strategy, 1.0), {})
            vs = _vs(r.get("mean_m"), wk["mean_m"])
            cells.append(f"{_f(r.get('mean_m'))} / {_f(r.get('median_m'))} ({vs})" if r else "–")
        out.append(
            _row(
                [
                    _mt_floor(d),
                    f"{d['n_train_paths']} / {d['n_test_paths']} ({_n(d['n_test_windows'])})",
                    f"{_f(cb['mean_m'])} / {_f(cb['median_m'])}",
                    f"{_f(wk['mean_m'])} / {_f(wk['median_m'])}",
                    _f((d.get("itoloc") or {}).get("mean_m")),
                    *cells,
                    " / ".join(_f(v) for v in q),
                    _cmd(d),
                ]
            )
        )
    return out


def _strategies(d: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(r["strategy"] for r in d["runs"]))


def mtloc_fractions(rows: list[dict[str, Any]]) -> list[str]:
    """Paper 000 Table V layout: median / mean / std per strategy and share of the target's training paths."""
    rows = _mt_merged(rows)
    fractions = sorted({r["fraction"] for d in rows for r in d["runs"]})
    head = ["target floor", "strategy", *[f"{f:.1%}".replace(".0%", "%") for f in fractions]]
    out = [_row(head), _row(["---", "---", *["--:"] * len(fractions)])]
    for d in rows:
        for strategy in _strategies(d):
            cells = []
            for f in fractions:
                r = _mt_run(d, strategy, f)
                a = r["all"] if r else None
                cells.append(f"{_f(a['median_m'])} / {_f(a['mean_m'])} / {_f(a['std_m'])}" if a else "")
            if any(cells):
                out.append(_row([_mt_floor(d), strategy, *cells]))
    return out


def mtloc_wipe(rows: list[dict[str, Any]]) -> list[str]:
    """Paper 000 Table VI layout: mean error (m) when a share of the test windows loses a modality."""
    rows = _mt_merged(rows)
    cases = ("wifi", "imu", "mag", "wifi+imu+mag")
    head = [
        "target floor",
        "model (100% of training paths)",
        "nothing wiped",
        *[f"{c} wiped" for c in cases],
        "median error_m: nothing / wifi wiped",
        "error_m rank corr.",
    ]
    out = [_row(head), _row(["---", "---", *["--:"] * (len(cases) + 3)])]
    for d in rows:
        for strategy in _strategies(d):
            r = _mt_run(d, strategy, 1.0)
            if r is None or "wipe_wifi" not in r:
                continue
            out.append(
                _row(
                    [
                        _mt_floor(d),
                        strategy,
                        _f(r["all"]["mean_m"]),
                        *[_f(r[f"wipe_{c}"]["mean_m"]) for c in cases],
                        f"{_f(r['all']['error_m_median'])} / {_f(r['wipe_wifi']['error_m_median'])}",
                        _f(r["all"].get("error_m_spearman")),
                    ]
                )
            )
    return out


def wknn_query(rows: list[dict[str, Any]]) -> list[str]:
    """`bench.wknn_query`: CPU ms per query, inverted index against the dense reference, per batch size."""
    head = [
        "batch",
        "inverted index (CPU ms / query)",
        "dense reference",
        "speed-up",
        "same floors",
        "freed memory kept (MiB)",
        "command",
    ]
    out = [_row(head), _row(["--:", "--:", "--:", "--:", "---", "--:", "---"])]
    for d in rows:
        keep = d.get("malloc_keep_mb")
        kept = _n(keep) if keep else ("glibc defaults" if "malloc_keep_mb" in d else "–")
        for name, r in (d.get("cpu_ms_per_query") or {}).items():
            new, old = r.get("inverted_index"), r.get("dense")
            speed = old / new if new and old else None
            same = "yes" if d.get("same_floors") else "no"
            out.append(_row([name.removeprefix("batch_"), _f(new, 3), _f(old, 3), _f(speed, 1), same, kept, _cmd(d)]))
    return out


def selfmaint(rows: list[dict[str, Any]]) -> list[str]:
    """bench.selfmaint results (one JSON per site or several sites each): one table over all their sites."""
    from bench.selfmaint import render as render_selfmaint

    sites: dict[str, Any] = {}
    for r in rows:  # runs of other variants of the same floors (e.g. the oracle) join their floors' rows
        for name, site in r.get("sites", {}).items():
            into = sites.setdefault(name, {"floors": {}, "pooled": {}})
            for floor, variants in site["floors"].items():
                into["floors"].setdefault(floor, {}).update(variants)
            into["pooled"].update({k: v for k, v in site.get("pooled", {}).items() if v})
    return render_selfmaint({"sites": sites}).rstrip("\n").split("\n")


KINDS: dict[str, Callable[[list[dict[str, Any]]], list[str]]] = {
    "selfmaint": selfmaint,
    "mtloc_goal": mtloc_goal,
    "mtloc_fractions": mtloc_fractions,
    "mtloc_wipe": mtloc_wipe,
    "cotrain": cotrain,
    "accuracy": accuracy,
    "latency": latency,
    "detect": detect,
    "import": imports,
    "load": load,
    "load_cpu": load_cpu,
    "wknn_query": wknn_query,
}


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


DEFAULT_DIRS = (Path("bench-out"), Path("docs/benchmarks/results"))


def _glob(dirs: Path | list[Path] | tuple[Path, ...], pattern: str) -> list[Path]:
    """Matches of `pattern` in the first folder that has each file name, sorted by name."""
    by_name: dict[str, Path] = {}
    for d in [dirs] if isinstance(dirs, Path) else dirs:
        for f in d.glob(pattern):
            by_name.setdefault(f.name, f)
    return [by_name[n] for n in sorted(by_name)]


def _result(path: Path) -> dict[str, Any]:
    """One result file; its "name" defaults to the file's stem."""
    row = json.loads(path.read_text())
    return {**row, "name": row.get("name", path.stem)}


def render(doc: str, bench_out: Path | list[Path] | tuple[Path, ...] = DEFAULT_DIRS) -> tuple[str, list[str]]:
    lines, out, missing = doc.splitlines(), [], []
    i = 0
    while i < len(lines):
        m = MARKER.match(lines[i].strip())
        out.append(lines[i])
        i += 1
        if not m:
            continue
        kind, patterns = m.group(1), m.group(2).split()
        if kind not in KINDS:
            raise SystemExit(f"unknown table kind {kind!r} in {lines[i - 1]!r}")
        found = {pat: _glob(bench_out, pat) for pat in patterns}
        absent = [pat for pat in patterns if not found[pat]]
        missing += absent
        files: list[Path] = []
        for pat in patterns:
            files += [f for f in found[pat] if f not in files]
        rows = [_result(f) for f in files]
        end = next((j for j in range(i, len(lines)) if lines[j].strip() == END), None)
        if end is None:
            raise SystemExit(f"no {END} after {lines[i - 1]!r}")
        # some of this table's result files are not here (another machine ran them): keep the table as it is
        # rather than drop the rows of the missing runs
        old = [ln for ln in lines[i:end] if ln.strip()]
        out += KINDS[kind](rows) if rows and not (absent and old) else old or ["_(no results: run the command above)_"]
        out.append(lines[end])
        i = end + 1
    return "\n".join(out) + "\n", missing


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("doc", nargs="?", type=Path, default=Path("docs/benchmarks/README.md"))
    ap.add_argument(
        "--bench-out",
        type=Path,
        action="append",
        help="result folder (repeatable; default: bench-out/, then docs/benchmarks/results/)",
    )
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 if the document is stale")
    args = ap.parse_args(argv)
    doc = args.doc.read_text()
    dirs = args.bench_out or list(DEFAULT_DIRS)
    new, missing = render(doc, dirs)
    for pat in missing:
        print(f"no results for {pat} under {', '.join(map(str, dirs))}", file=sys.stderr)
    if args.check:
        return 0 if new == doc else 1
    args.doc.write_text(new)
    print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
