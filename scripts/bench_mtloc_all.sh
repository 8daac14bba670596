#!/usr/bin/env bash
# Every MTLoc figure of docs/benchmarks/mtloc.md, in order (about 3 h on a 2-core CPU). Extra arguments (e.g.
# --data-dir) go to each run; then `python -m bench.report docs/benchmarks/mtloc.md` renders the tables.
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
$py -m bench.mtloc --fractions 0.125,0.25,0.5,0.75,1 --stride-ms 200 --pretrain-stride-ms 500 \
  --variant speed --itoloc --tag final "$@"
$py -m bench.mtloc --fractions 0.375,0.625,0.875 --scratch-fractions "" --stride-ms 200 \
  --pretrain-stride-ms 500 --tag final_more "$@"
$py -m bench.mtloc --fractions 0.25,1 --stride-ms 200 --pretrain-stride-ms 500 \
  --params '{"knn_blend": false}' --tag paper "$@"
