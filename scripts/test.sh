#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what it needs, then lint, types and tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -k rules -x).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --test
VENV="${VENV:-.venv}"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
"$VENV/bin/pytest" "$@"
