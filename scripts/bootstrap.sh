#!/usr/bin/env bash
# Prepare a fresh machine: a virtual environment with the package and its test tools, and the
# system binaries the tests use (Mosquitto, docker-compose to validate the compose file,
# openssl to make test certificates, Chromium and its driver for the console's browser tests,
# PostgreSQL and MariaDB server binaries for the CDC tests).
#
# pip runs only when needed: once into a new venv, and again when pyproject.toml, setup.py or
# the compiled JSON encoder's source (bridge/hstream/_structenc.c, built in place by the editable
# install; without a C compiler the package falls back to its pure-Python twin) changes, or when
# that module is missing although a C compiler is there. A
# stamp file in the venv holds the hash of the files it was installed from
# ($VENV/.hstream-bridge-installed for the package, $VENV/.hstream-bridge-installed-test for
# the package with its test extra); when it matches, nothing is installed and the script
# finishes in milliseconds, silently. pip's output (setuptools' build warnings included) goes
# to $VENV/bootstrap.log and is shown only when pip fails.
#
# Usage: scripts/bootstrap.sh [--test]
# Environment: VENV (default .venv), PYTHON (default python3), BOOTSTRAP_VERBOSE=1 (say on
# stderr whether it installed or found everything up to date).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3}"
test_extra=false
[[ "${1:-}" == "--test" ]] && test_extra=true

say() {
    if [[ -n "${BOOTSTRAP_VERBOSE:-}" ]]; then
        echo "bootstrap: $*" >&2
    fi
}

hash_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

want=$(cat pyproject.toml setup.py bridge/hstream/_structenc.c | hash_of -)
stamp="$VENV/.hstream-bridge-installed"
test_stamp="$VENV/.hstream-bridge-installed-test"
log="$VENV/bootstrap.log"

compiled() {  # the optional C encoder is built in place, or cannot be (no C compiler)
    compgen -G "bridge/hstream/_structenc*.so" >/dev/null || ! command -v "${CC:-cc}" >/dev/null 2>&1
}

current() {  # the stamp file $1 names these sources, and the command is installed
    [[ -f "$1" && "$(<"$1")" == "$want" && -x "$VENV/bin/hstream-bridge" ]] && compiled
}

pip() {  # quiet; the log is shown only when pip fails
    if ! "$VENV/bin/python" -m pip --disable-pip-version-check "$@" >>"$log" 2>&1; then
        cat "$log" >&2
        echo "bootstrap: pip $* failed (log: $log)" >&2
        exit 1
    fi
}

if [[ ! -x "$VENV/bin/python" ]]; then
    "$PY" -m venv "$VENV"
fi

if $test_extra; then
    if current "$test_stamp"; then
        say "$VENV is up to date (with the test extra)"
    else
        echo "bootstrap: installing hstream-bridge with its test tools into $VENV" >&2
        rm -f "$stamp" "$test_stamp"  # an interrupted install is done again next time
        : >"$log"
        pip install --quiet --upgrade pip
        # The test extra includes the official HStreamDB Python client (hstreamdb==0.5.0, the
        # reference client of tests and benchmarks), whose setup.py imports pkg_resources: it
        # builds only with setuptools<81 and without build isolation, so those build tools go
        # into the venv first (>=77 as pyproject.toml's build-system asks) and the whole extra
        # is installed against them.
        pip install --quiet --upgrade "setuptools>=77,<81" wheel
        pip install --quiet --no-build-isolation -e ".[test]"
        echo "$want" >"$test_stamp"
        echo "$want" >"$stamp"
        say "installed"
    fi
    missing=()
    command -v mosquitto >/dev/null 2>&1 || [[ -x /usr/sbin/mosquitto ]] || missing+=(mosquitto)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)  # TLS test certificates
    # The console's browser tests (tests/ui/) drive Debian's Chromium (/usr/bin/chromium and
    # /usr/bin/chromedriver): Selenium is never left to download a browser or a driver.
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
    # The CDC tests (tests/cdc/) start throwaway PostgreSQL and MariaDB servers of their own on
    # free ports from these binaries (never the machine's own servers, if any).
    compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
    command -v mariadbd >/dev/null 2>&1 || [[ -x /usr/sbin/mariadbd ]] || missing+=(mariadb-server)
    if (( ${#missing[@]} )); then
        SUDO=""
        [[ "$(id -u)" == 0 ]] || SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
elif current "$stamp" || current "$test_stamp"; then  # the test extra includes the package
    say "$VENV is up to date"
else
    echo "bootstrap: installing hstream-bridge into $VENV" >&2
    rm -f "$stamp"
    : >"$log"
    pip install --quiet --upgrade pip
    pip install --quiet -e .
    echo "$want" >"$stamp"
    say "installed"
fi
