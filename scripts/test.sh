#!/usr/bin/env bash
# The test command: sets itself up on a fresh clone, then lints and runs the whole suite.
#   ./scripts/test.sh                 embedded mode (SQLite, in-process worker)
#   SITELOC_TEST_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/postgres \
#   SITELOC_TEST_REDIS_URL=redis://127.0.0.1:6379/15 ./scripts/test.sh
#                                     the same tests in full mode (PostgreSQL, Redis, a Celery worker process)
# Extra arguments go to pytest. pytest's "no tests collected" (exit 5) fails this script like any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
.venv/bin/ruff check app worker ml bench migrations tests scripts
exec .venv/bin/python -m pytest "$@"
