#!/usr/bin/env bash
# The demo command: sets itself up on a fresh clone, builds a demo site from bundled UJIIndoorLoc data,
# trains wknn, serves on http://127.0.0.1:8000 and prints a curl to try. Extra arguments go to `siteloc demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/siteloc demo "$@"
