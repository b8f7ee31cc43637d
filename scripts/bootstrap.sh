#!/usr/bin/env bash
# Prepare a fresh machine: a virtual environment with the package and its test tools, and the
# system binaries the tests use (Mosquitto, docker-compose to validate the compose file,
# openssl to make test certificates).
# Usage: scripts/bootstrap.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
if [[ "${1:-}" == "--test" ]]; then
    "$VENV/bin/python" -m pip install --quiet -e ".[test]"
    # The official HStreamDB Python client (used by tests and benchmarks as the reference) has a
    # setup.py that imports pkg_resources, so it needs an old setuptools and no build isolation.
    if ! "$VENV/bin/python" -c "import hstreamdb" 2>/dev/null; then
        "$VENV/bin/python" -m pip install --quiet "setuptools<81" wheel
        "$VENV/bin/python" -m pip install --quiet --no-build-isolation "hstreamdb==0.5.0"
    fi
    missing=()
    command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # TLS test certificates
    if (( ${#missing[@]} )); then
        SUDO=""
        [[ "$(id -u)" == 0 ]] || SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
else
    "$VENV/bin/python" -m pip install --quiet -e .
fi
