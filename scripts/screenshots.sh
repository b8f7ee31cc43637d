#!/usr/bin/env bash
# The console's screenshots for the README (docs/console-desktop.png, docs/console-narrow.png):
# installs what the browser tests need (scripts/bootstrap.sh --test), then runs
# scripts/screenshots.py, which starts its own Mosquitto and bridge on 127.0.0.1.
# Usage: scripts/screenshots.sh [OUT_DIR]   (default docs/)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --test
exec "${VENV:-.venv}/bin/python" scripts/screenshots.py "$@"
