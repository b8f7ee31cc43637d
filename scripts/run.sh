#!/usr/bin/env bash
# Run the bridge on a fresh machine: installs it into .venv (once, and again only when
# pyproject.toml changes: see scripts/bootstrap.sh), then starts `hstream-bridge run` with the
# embedded store. Extra arguments go to `hstream-bridge run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec "${VENV:-.venv}/bin/hstream-bridge" run "$@"
