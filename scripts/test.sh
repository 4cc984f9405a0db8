#!/usr/bin/env bash
# Runs lint, types and the whole test suite against a real local Kafka, which it starts (and
# stops again if it started it). Extra arguments go to pytest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
started=0
if ! scripts/kafka.sh status >/dev/null 2>&1; then
  scripts/kafka.sh up
  started=1
fi
cleanup() { if [ "$started" = 1 ]; then scripts/kafka.sh down; fi; }
trap cleanup EXIT
.venv/bin/python -m pytest "$@"
