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
    # The test extra includes the official HStreamDB Python client (hstreamdb==0.5.0, the
    # reference client of tests and benchmarks), whose setup.py imports pkg_resources: it builds
    # only with setuptools<81 and without build isolation, so those build tools go into the venv
    # first (>=77 as pyproject.toml's build-system asks) and the whole extra is installed
    # against them.
    "$VENV/bin/python" -m pip install --quiet --upgrade "setuptools>=77,<81" wheel
    "$VENV/bin/python" -m pip install --quiet --no-build-isolation -e ".[test]"
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
