"""scripts/bootstrap.sh installs once, and again only when pyproject.toml (or the build of the
compiled JSON encoder: setup.py, bridge/hstream/_structenc.c) changes; scripts/run.sh then starts
the bridge at once, with nothing on the terminal before its first log line.

Most tests here run the script against a fake venv whose `bin/python` records its arguments
instead of running pip: they see exactly when pip would run, and install nothing.
"""

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto
from tests.support.store import REPO_ROOT

BOOTSTRAP = REPO_ROOT / "scripts" / "bootstrap.sh"
INSTALL_SOURCES = ("pyproject.toml", "setup.py", "bridge/hstream/_structenc.c")
PYPROJECT_HASH = hashlib.sha256(
    b"".join((REPO_ROOT / name).read_bytes() for name in INSTALL_SOURCES)
).hexdigest()


class FakeVenv:
    """A venv whose python logs `-m pip ...` calls to `calls` and succeeds."""

    def __init__(self, root: Path) -> None:
        self.path = root / "venv"
        self.calls = root / "python-calls"
        bin_dir = self.path / "bin"
        bin_dir.mkdir(parents=True)
        self._executable(bin_dir / "python", f'#!/bin/sh\necho "$*" >> "{self.calls}"\n')
        self._executable(bin_dir / "hstream-bridge", "#!/bin/sh\n")
        # The system tools `--test` looks for, so that it never calls apt-get here.
        self.tools = root / "tools"
        self.tools.mkdir()
        for tool in ("mosquitto", "docker-compose", "openssl", "chromium", "chromedriver"):
            self._executable(self.tools / tool, "#!/bin/sh\n")
        for tool in ("sudo", "apt-get"):
            self._executable(
                self.tools / tool, "#!/bin/sh\necho 'apt-get must not run' >&2\nexit 9\n"
            )

    @staticmethod
    def _executable(path: Path, text: str) -> None:
        path.write_text(text)
        path.chmod(0o755)

    def pip_calls(self) -> list[str]:
        if not self.calls.exists():
            return []
        return [line for line in self.calls.read_text().splitlines() if "-m pip" in line]

    def bootstrap(self, *args: str, verbose: bool = False) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "VENV": str(self.path),
            "PATH": f"{self.tools}:{os.environ['PATH']}",
            # No C compiler: a missing compiled encoder does not make it install again here.
            "CC": "no-such-cc",
        }
        env.pop("BOOTSTRAP_VERBOSE", None)
        if verbose:
            env["BOOTSTRAP_VERBOSE"] = "1"
        result = subprocess.run(
            [str(BOOTSTRAP), *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result


@pytest.fixture
def venv(tmp_path: Path) -> FakeVenv:
    return FakeVenv(tmp_path)


def test_pip_runs_once_then_not_until_pyproject_changes(venv: FakeVenv) -> None:
    first = venv.bootstrap()
    installs = venv.pip_calls()
    assert any(call.endswith("install --quiet -e .") for call in installs), installs
    assert first.stdout == ""
    # One line says what is going on; pip's own output (warnings included) stays in the log.
    assert first.stderr.splitlines() == [f"bootstrap: installing hstream-bridge into {venv.path}"]
    assert (venv.path / ".hstream-bridge-installed").read_text().strip() == PYPROJECT_HASH

    second = venv.bootstrap()
    assert venv.pip_calls() == installs  # pip did not run again
    assert (second.stdout, second.stderr) == ("", "")
    said = venv.bootstrap(verbose=True)
    assert said.stderr == f"bootstrap: {venv.path} is up to date\n"
    assert venv.pip_calls() == installs

    # pyproject.toml changed since the install (the hash is not the stamp's): install again.
    (venv.path / ".hstream-bridge-installed").write_text("0" * 64 + "\n")
    venv.bootstrap()
    assert len(venv.pip_calls()) == 2 * len(installs)


def test_the_test_extra_has_its_own_stamp(venv: FakeVenv) -> None:
    venv.bootstrap()
    plain = venv.pip_calls()
    venv.bootstrap("--test")  # the package alone does not make the test tools
    with_tests = venv.pip_calls()[len(plain) :]
    assert any(call.endswith("-e .[test]") for call in with_tests), with_tests
    assert (venv.path / ".hstream-bridge-installed-test").read_text().strip() == PYPROJECT_HASH

    again = venv.bootstrap("--test", verbose=True)
    assert again.stderr == f"bootstrap: {venv.path} is up to date (with the test extra)\n"
    plain_again = venv.bootstrap(verbose=True)  # the test extra includes the package
    assert plain_again.stderr == f"bootstrap: {venv.path} is up to date\n"
    assert len(venv.pip_calls()) == len(plain) + len(with_tests)


def test_a_failing_pip_shows_its_output_and_fails(venv: FakeVenv) -> None:
    python = venv.path / "bin" / "python"
    python.write_text("#!/bin/sh\necho 'ERROR: no such package' >&2\nexit 1\n")
    result = subprocess.run(
        [str(BOOTSTRAP)],
        cwd=REPO_ROOT,
        env={**os.environ, "VENV": str(venv.path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "ERROR: no such package" in result.stderr
    assert not (venv.path / ".hstream-bridge-installed").exists()  # tried again next time


def run_bootstrap(venv: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "VENV": str(venv), "BOOTSTRAP_VERBOSE": "1"}
    started = time.monotonic()
    result = subprocess.run(
        [str(BOOTSTRAP)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    return result, time.monotonic() - started


@pytest.fixture(scope="module")
def installed() -> Path:
    """The repository's .venv, bootstrapped (pip runs only if its stamp is missing or stale)."""
    venv = REPO_ROOT / ".venv"
    if not (venv / "bin" / "python").exists():
        pytest.skip("no .venv in the repository")
    result, _ = run_bootstrap(venv)
    assert result.returncode == 0, result.stderr
    return venv


def test_the_real_venv_is_up_to_date_after_one_run(installed: Path) -> None:
    result, seconds = run_bootstrap(installed)
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"bootstrap: {installed} is up to date\n"
    assert result.stdout == ""
    assert seconds < 1.0


def test_run_sh_starts_at_once_with_nothing_before_its_first_log_line(
    installed: Path, mosquitto: Mosquitto, tmp_path: Path
) -> None:
    command = [
        str(REPO_ROOT / "scripts" / "run.sh"),
        "--mqtt-url", mosquitto.url,
        "--api-listen", "127.0.0.1:0",
        "--data-dir", str(tmp_path / "data"),
        "--client-id", f"run-sh-{os.getpid()}",
    ]  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        env={**os.environ, "VENV": str(installed)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    lines = []
    try:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if "bridge running" in line:
                break
        seconds = time.monotonic() - started
    finally:
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
    assert process.returncode == 0, "\n".join(lines) + rest
    print(f"\nscripts/run.sh: bridge running after {seconds:.2f} s")
    # Every line is a log line ("2026-01-01T00:00:00.000Z INFO ..."): no pip, no warnings.
    assert lines, rest
    assert all(line[:4].isdigit() and line[10:11] == "T" for line in lines), lines
    assert "bridge running" in lines[-1]
    assert seconds < 5.0  # ~1 s on 2 shared cores; the bound leaves room for a loaded machine
