"""wknn query cost: the inverted-index query against the dense per-query path it replaced, same model, same queries.

    python -m bench.wknn_query [--data-dir ../shared/data] [--out bench-out]

Indexes all 19,937 UJIIndoorLoc trainingData scans (wknn's default representation and distance, no tuning: the
query cost does not depend on the tuned k's) and answers the 1,111 validationData scans in batches of 1, 10 and
32. Reports CPU milliseconds per query (`time.thread_time`, so the figure does not depend on what else runs on
the host) for both paths, and checks that they answer alike. Memory is handled as in an API process
(`app.runtime.tune_malloc` with `--malloc-keep-mb`, default as `SITELOC_MALLOC_KEEP_MB`; 0 = glibc's defaults,
under which every batch's scratch arrays are faulted in afresh).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.config import Settings
from app.runtime import tune_malloc
from bench.core import git_commit
from bench.imports import default_data_dir
from ml.data.features import build_set
from ml.data.ujiindoorloc import load_uji
from ml.models.base import QueryBatch
from ml.models.wknn import WKNN, SparseIndex, SparseRows, WKNNParams, represent


class DenseReferenceIndex(SparseIndex):
    """The query path before the inverted index (kept as the reference): a dense AP-major (APs x n) float32
    matrix, and per query the (APs heard x n) block, min/multiply and sum."""

    def __init__(self, rows: SparseRows, n_cols: int, p: WKNNParams, min_rss: float) -> None:
        super().__init__(rows, n_cols, p, min_rss)
        self.by_ap = np.zeros((n_cols, self.n), dtype=np.float32)
        self.by_ap[rows.cols, rows.row_ids()] = represent(rows.rss, p, min_rss)

    def overlap(
        self, q: SparseRows, qvals: np.ndarray, need_min: bool = True, need_dot: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        b = len(q)
        mins = np.zeros((b, self.n) if need_min else (0, self.n), dtype=np.float64)
        dots = np.zeros((b, self.n) if need_dot else (0, self.n), dtype=np.float64)
        v32 = qvals.astype(np.float32)
        for i in range(b):
            lo, hi = q.indptr[i], q.indptr[i + 1]
            block = self.by_ap[q.cols[lo:hi]]
            v = v32[lo:hi, None]
            if need_min:
                mins[i] = np.minimum(block, v).sum(axis=0, dtype=np.float64)
            if need_dot:
                dots[i] = np.multiply(block, v, out=block).sum(axis=0, dtype=np.float64)
        return mins, dots


def reference_of(model: WKNN) -> WKNN:
    """The same model answering through `DenseReferenceIndex`."""
    ref = WKNN(model.aps, model.params, model.min_rss, model.survey, model.groups, model.calibration)
    m = ref.matcher
    m.index = DenseReferenceIndex(m.survey.rows, m.survey.n_cols, m.p, m.min_rss)
    return ref


def cpu_ms_per_query(model: WKNN, rss: np.ndarray, batch: int, repeats: int = 3) -> float:
    model.predict(QueryBatch(rss=rss[:batch]))  # warm-up
    best = float("inf")
    for _ in range(repeats):  # the least disturbed of a few passes
        t0 = time.thread_time()
        for lo in range(0, len(rss), batch):
            model.predict(QueryBatch(rss=rss[lo : lo + batch]))
        best = min(best, (time.thread_time() - t0) * 1000 / len(rss))
    return round(best, 4)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=default_data_dir())
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--malloc-keep-mb", type=int, default=Settings.model_fields["malloc_keep_mb"].default)
    ap.add_argument("--name", default="wknn_query", help="output file stem")
    args = ap.parse_args(argv)
    tuned = tune_malloc(args.malloc_keep_mb)
    train = build_set(load_uji(args.data_dir, "train"))
    val = build_set(load_uji(args.data_dir, "validation"), train.aps)
    model = WKNN.fit(train, {"tune": False, "calibrate": False})
    reference = reference_of(model)
    batch = QueryBatch(rss=val.rss)
    new, old = model.predict(batch), reference.predict(batch)
    result: dict[str, Any] = {
        "command": "python -m bench.wknn_query " + " ".join(argv if argv is not None else sys.argv[1:]),
        "git_commit": git_commit(),
        "malloc_keep_mb": args.malloc_keep_mb if tuned else None,
        "fingerprints": model.matcher.index.n,
        "queries": len(val),
        "same_floors": bool(list(new.floor) == list(old.floor)),
        "max_xy_difference_m": float(np.abs(new.xy - old.xy).max()),
        "cpu_ms_per_query": {
            f"batch_{b}": {
                "inverted_index": cpu_ms_per_query(model, val.rss, b),
                "dense": cpu_ms_per_query(reference, val.rss, b),
            }
            for b in (1, 10, 32)
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"{args.name}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
