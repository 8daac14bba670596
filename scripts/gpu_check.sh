#!/usr/bin/env bash
# GPU check (issue 21): one prepared run on a machine with one NVIDIA GPU, bounded to ~8 minutes.
#
#   scripts/gpu_check.sh [DATA_DIR]            # DATA_DIR default ../shared/data (ujiindoorloc.zip, ilc2020/)
#   GPU_CHECK_TINY=1 SITELOC_DEVICE=cpu scripts/gpu_check.sh   # CPU smoke test: no install, fixtures, tiny settings
#
# Steps, most valuable first; each bounded by `timeout` and by one overall deadline (GPU_CHECK_BUDGET_S, default
# 450 s; a step that would start with under 15 s left is skipped):
#   facts          nvidia-smi, python/torch/CUDA/cuDNN versions, the GPU, TF32 switches
#   install        venv (.venv-gpu, --system-site-packages so a preinstalled CUDA torch is reused) + `pip install -e .`
#                  from the wheels in .whl/ (--no-index --find-links .whl) when that folder exists, else from the
#                  normal index; without either it installs the project with --no-deps (the model code needs only
#                  torch, numpy, safetensors; pytest and matplotlib for the tests and benches)
#   test_gpu       SITELOC_DEVICE=cuda pytest -m gpu tests/unit/test_gpu.py (placement, CPU/CUDA parity)
#   test_models    the model unit tests (test_wknn, test_itoloc, test_mtloc, test_transfer, test_gpu's CPU part)
#   itoloc_uji_published  itoloc on UJIIndoorLoc at paper 002's configuration (200 epochs; see docs/benchmarks/gpu.md)
#   itoloc_uji_default    itoloc on UJIIndoorLoc at the defaults
#   dnn_uji, cnnloc_uji   dnn / cnnloc on UJIIndoorLoc
#   predict        bench.gpu_predict: predict throughput per model at batch 1/32/256
#   mtloc_ilc      bench.mtloc: scratch MTLoc on one ILC floor (site2 F3), 100% of its training paths
#
# Results: ${OUT:-bench-out/gpu}/summary.json (rewritten after every step), gpu_check.log (every step's output,
# lines prefixed by step name and seconds since the step started) and raw.tar.gz (the benchmark JSONs, CDF plots and
# per-step logs, also left in ${GPU_CHECK_RAW:-bench-out/gpu-raw}). Three files: the device tool returns at most 8.
#
# Other knobs: GPU_CHECK_STEPS=step,step (run only these), GPU_CHECK_PYTHON (base interpreter, default python3),
# GPU_CHECK_VENV (default .venv-gpu), GPU_CHECK_ITOLOC_PUBLISHED_S (that step's cap, default 150).
set -uo pipefail
export LC_ALL=C PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

TINY=${GPU_CHECK_TINY:-0}
DEV=${SITELOC_DEVICE:-cuda}
DATA=${1:-${GPU_CHECK_DATA:-../shared/data}}
OUT=${OUT:-bench-out/gpu}
RAW=${GPU_CHECK_RAW:-bench-out/gpu-raw}
BASE_PY=${GPU_CHECK_PYTHON:-python3}
VENV=${GPU_CHECK_VENV:-.venv-gpu}
STEPS=${GPU_CHECK_STEPS:-all}
if [ "$TINY" = 1 ]; then BUDGET=${GPU_CHECK_BUDGET_S:-1200}; else BUDGET=${GPU_CHECK_BUDGET_S:-450}; fi
START=$(date +%s)
DEADLINE=$((START + BUDGET))
export SITELOC_DEVICE=$DEV

mkdir -p "$OUT"
rm -rf "$RAW" && mkdir -p "$RAW"
LOG=$OUT/gpu_check.log
: >"$LOG"
PY=$BASE_PY

say() { echo "[gpu_check $(($(date +%s) - START)) s] $*" | tee -a "$LOG"; }

wanted() { [ "$STEPS" = all ] || [[ ",$STEPS," == *",$1,"* ]]; }

# stamp NAME: prefix each line with NAME and seconds since the step started; into the step log and the main log
stamp() {
    local name=$1 t0=${EPOCHREALTIME/./} line n d
    while IFS= read -r line || [ -n "$line" ]; do
        n=${EPOCHREALTIME/./}
        d=$(((n - t0) / 10000))
        printf '%s %d.%02d %s\n' "$name" $((d / 100)) $((d % 100)) "$line"
    done | tee -a "$LOG" >"$RAW/$name.log"
}

summarize() { "$PY" scripts/gpu_check_summary.py "$RAW" "$OUT" || say "summary failed (rc $?)"; }

# step NAME CAP_S COMMAND...: run COMMAND under timeout min(CAP_S, time left), record its outcome, update the summary
step() {
    local name=$1 cap=$2
    shift 2
    wanted "$name" || return 0
    local left=$((DEADLINE - $(date +%s))) status rc t0 secs
    if ((left < 15)); then
        say "$name: skipped (${left} s of the budget left)"
        printf '{"step": "%s", "status": "skipped", "rc": null, "seconds": 0, "timeout_s": 0}\n' "$name" >>"$RAW/steps.jsonl"
        summarize
        return 0
    fi
    local t=$((cap < left ? cap : left))
    say "$name: start (timeout ${t} s): $*"
    t0=$(date +%s)
    timeout -k 10 "$t" "$@" 2>&1 | stamp "$name"
    rc=${PIPESTATUS[0]}
    secs=$(($(date +%s) - t0))
    case $rc in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed ;; esac
    say "$name: $status (rc $rc) after ${secs} s"
    printf '{"step": "%s", "status": "%s", "rc": %d, "seconds": %d, "timeout_s": %d}\n' \
        "$name" "$status" "$rc" "$secs" "$t" >>"$RAW/steps.jsonl"
    summarize
}

facts() {
    if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
    "$PY" - "$RAW/facts.json" <<'EOF'
import json, platform, sys
facts = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform()}
try:
    import torch
    facts.update(torch=torch.__version__, torch_cuda_build=torch.version.cuda, cuda_available=torch.cuda.is_available(),
                 cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                 tf32_matmul=torch.backends.cuda.matmul.allow_tf32, tf32_cudnn=torch.backends.cudnn.allow_tf32,
                 cpu_threads=torch.get_num_threads())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        facts.update(gpu=p.name, gpu_count=torch.cuda.device_count(), capability=f"{p.major}.{p.minor}",
                     gpu_memory_gib=round(p.total_memory / 2**30, 1), multiprocessors=p.multi_processor_count)
except Exception as exc:  # report, never stop the check here
    facts["torch_error"] = repr(exc)
print(json.dumps(facts, indent=2))
json.dump(facts, open(sys.argv[1], "w"), indent=2)
EOF
}

install_project() {
    set -x
    [ -x "$VENV/bin/python" ] || "$BASE_PY" -m venv --system-site-packages "$VENV" || return 1
    local vpy=$VENV/bin/python
    if [ -d .whl ]; then
        # wheels carried along (torch CUDA build within torch>=2.3,<2.15 if the machine has none, and the
        # project's other dependencies): no index at all
        "$vpy" -m pip install -q --no-index --find-links .whl -e . && return 0
        echo "install from .whl failed"
    else
        timeout 120 "$vpy" -m pip install -q --retries 0 --timeout 15 -e . && return 0
        echo "install from the index failed (no internet?)"
    fi
    # the service's dependencies could not be installed: the models, tests and benches need none of them
    "$vpy" -m pip install -q --no-deps --no-build-isolation -e . || echo "editable install failed: running from the checkout"
    return 0
}

check_torch() {
    "$PY" - "$TINY" <<'EOF'
import sys
import torch
major, minor = (int(v) for v in torch.__version__.split("+")[0].split(".")[:2])
print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, cuda available {torch.cuda.is_available()}")
if not (2, 3) <= (major, minor) < (2, 15):
    sys.exit(f"torch {torch.__version__} is outside the project's range torch>=2.3,<2.15")
if sys.argv[1] != "1" and not torch.cuda.is_available():
    sys.exit("this torch cannot use a GPU (CPU build, or no driver): the CUDA steps will fail")
EOF
}

# ---------------------------------------------------------------- settings per mode

PUBLISHED='{"width": 32, "stem_pool": false, "batch_size": 32, "lr": 0.1, "epochs": 200, "min_steps": 0, "min_batches_per_epoch": 0}'
ITOLOC_DEFAULT='{}'
DNN='{}'
CNNLOC='{}'
MTLOC_FLOOR=F3
MTLOC_ARGS=()
PREDICT_ARGS=()
TEST_ARGS=()
if [ "$TINY" = 1 ]; then
    # fixture data laid out as a data directory: UJI slices as ujiindoorloc.zip, the ILC trace fixture as site2/F1
    FIX=$RAW/fixture-data
    mkdir -p "$FIX"
    "$PY" -c "import sys; from pathlib import Path; from tests.fixture_data import uji_data_dir; uji_data_dir(Path(sys.argv[1]))" "$FIX"
    mkdir -p "$FIX/data/ilc2020/site2"
    ln -sf "$PWD/tests/fixtures/ilc_site1_F1_small.tar.xz" "$FIX/data/ilc2020/site2/F1.tar.xz"
    DATA=$FIX/data
    PUBLISHED='{"width": 32, "stem_pool": false, "batch_size": 32, "lr": 0.1, "epochs": 2, "min_steps": 0, "min_batches_per_epoch": 0, "n_aps": 12}'
    ITOLOC_DEFAULT='{"epochs": 1, "min_steps": 0, "n_aps": 12, "width": 8}'
    DNN='{"epochs": 2, "hidden": 64, "latent": 32, "rep": 32}'
    CNNLOC='{"epochs": 2, "hidden": 64, "latent": 32, "rep": 32, "channels": 4, "sae_epochs": 1}'
    MTLOC_FLOOR=F1
    MTLOC_ARGS=(--epochs 2 --test-fraction 0.25 --params '{"n_aps": 64, "wifi_hidden": 16, "imu_hidden": 8, "mag_hidden": 8, "fusion_hidden": 16}')
    PREDICT_ARGS=(--tiny --min-seconds 0.2)
fi

# ---------------------------------------------------------------- the run

say "mode: $([ "$TINY" = 1 ] && echo tiny || echo full), device $DEV, data $DATA, budget ${BUDGET} s, out $OUT, raw $RAW"
export PY RAW
export -f facts
step facts 30 bash -c facts
if [ "$TINY" = 1 ]; then
    say "install: skipped (tiny mode uses $PY)"
else
    export BASE_PY VENV
    export -f install_project
    step install 150 bash -c install_project
    [ -x "$VENV/bin/python" ] && PY=$VENV/bin/python
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
check_torch 2>&1 | tee -a "$LOG" || say "torch check failed: see above"
if [ "$TINY" != 1 ] && "$PY" -c "import xdist" 2>/dev/null; then TEST_ARGS=(-n 8); fi

step test_gpu 120 "$PY" -m pytest -q -p no:cacheprovider -rs -m gpu tests/unit/test_gpu.py
step test_models 180 "$PY" -m pytest -q -p no:cacheprovider "${TEST_ARGS[@]}" -m "not gpu" \
    tests/unit/test_wknn.py tests/unit/test_itoloc.py tests/unit/test_mtloc.py tests/unit/test_transfer.py tests/unit/test_gpu.py
step itoloc_uji_published "${GPU_CHECK_ITOLOC_PUBLISHED_S:-150}" "$PY" -m bench uji --data-dir "$DATA" --device "$DEV" \
    --out "$RAW" --model itoloc --tag gpu-published -v --params "$PUBLISHED"
step itoloc_uji_default 100 "$PY" -m bench uji --data-dir "$DATA" --device "$DEV" --out "$RAW" --model itoloc \
    --tag gpu-default -v --params "$ITOLOC_DEFAULT"
step dnn_uji 60 "$PY" -m bench uji --data-dir "$DATA" --device "$DEV" --out "$RAW" --model dnn --tag gpu -v --params "$DNN"
step cnnloc_uji 60 "$PY" -m bench uji --data-dir "$DATA" --device "$DEV" --out "$RAW" --model cnnloc --tag gpu -v \
    --params "$CNNLOC"
step predict 60 "$PY" -m bench.gpu_predict --device "$DEV" --data-dir "$DATA" --ilc-floor "site2/$MTLOC_FLOOR" \
    --out "$RAW" "${PREDICT_ARGS[@]}"
step mtloc_ilc 60 "$PY" -m bench.mtloc --data-dir "$DATA" --device "$DEV" --out "$RAW" --target site2 \
    --floors "$MTLOC_FLOOR" --strategies "" --fractions "" --scratch-fractions 1 --stride-ms 200 --tag gpu "${MTLOC_ARGS[@]}"

say "done in $(($(date +%s) - START)) s; results: $OUT/summary.json, $OUT/gpu_check.log, $OUT/raw.tar.gz"
