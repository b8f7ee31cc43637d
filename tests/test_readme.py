"""Every command README.md shows runs as written from the repository root.

What can be checked cheaply is checked for every command in a ```sh block and every inline
command (`scripts/...`, `hstream-bridge ...`, `.venv/bin/...`): the scripts exist and are
executable, every `hstream-bridge` invocation (and what scripts/run.sh passes on to
`hstream-bridge run`) parses, and the files it names exist. The quick start is run for real:
its bridge, its messages and its `tail` commands, as written.
"""

import argparse
import asyncio
import contextlib
import io
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.cli import build_parser
from tests.support.bridge import BridgeProcess, wait_for_records
from tests.support.mosquitto import Mosquitto, publish
from tests.support.store import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()

FENCE = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`]+)`")
INLINE_COMMAND = re.compile(r"(scripts/|hstream-bridge\s|\.venv/bin/)")

# Commands whose effects are not cheap to check here (they install, reach the network or need a
# running bridge); their spelling is checked by the quick-start test where it matters.
NOT_CHECKED = {"curl", "sudo", "docker", "docker-compose", "mosquitto_pub"}
# Scripts whose arguments go to pytest.
PYTEST_SCRIPTS = {"scripts/test.sh", "scripts/mutants.sh", ".venv/bin/pytest"}


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README) if lang == language]


def commands_in(block: str) -> list[list[str]]:
    """The commands of a shell block, as argument lists (continuations joined, comments off)."""
    commands = []
    pending = ""  # a command whose quoted argument goes on over lines
    for line in block.replace("\\\n", " ").splitlines():
        pending += line + "\n"
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # no closing quotation yet
            continue
        pending = ""
        if words and not re.fullmatch(r"[A-Z_]+=.*", words[0]):  # API=..., AUTH=...
            commands.append(words)
    assert not pending, f"unbalanced quotes in a README shell block: {pending!r}"
    return commands


def sh_commands() -> list[list[str]]:
    return [command for block in blocks("sh") for command in commands_in(block)]


def inline_commands() -> list[list[str]]:
    prose = FENCE.sub("", README)
    spans = (" ".join(span.split()) for span in INLINE.findall(prose))
    return [shlex.split(span) for span in spans if INLINE_COMMAND.match(span) and " " in span]


def parse(argv: list[str]) -> argparse.Namespace:
    """`hstream-bridge <argv>` parsed as the command would parse it; a failure names argv."""
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`hstream-bridge {shlex.join(argv)}` does not parse: {errors.getvalue()}")


def check(command: list[str]) -> None:
    program, args = command[0], command[1:]
    if program in NOT_CHECKED:
        return
    if program in ("hstream-bridge", "scripts/hstream-bridge", ".venv/bin/hstream-bridge"):
        cli_args = args
    elif program == "scripts/run.sh":
        cli_args = ["run", *args]
    elif program in PYTEST_SCRIPTS:
        paths = [arg for arg in args if not arg.startswith("-") and "/" in arg]
        missing = [path for path in paths if not (REPO_ROOT / path).exists()]
        assert not missing, f"{shlex.join(command)}: no such test path {missing}"
        cli_args = None
    elif program.startswith("scripts/"):
        cli_args = None
    else:
        pytest.fail(f"README command `{shlex.join(command)}`: add a check for {program!r}")
    # Run from the repository root, as the README says; .venv is made by scripts/run.sh.
    if program.startswith("scripts/") or ("/" in program and (REPO_ROOT / ".venv").is_dir()):
        path = REPO_ROOT / program
        assert path.is_file(), f"{program} does not exist"
        assert os.access(path, os.X_OK), f"{program} is not executable"
    if cli_args is not None:
        parsed = parse(cli_args)
        config = getattr(parsed, "config", None)
        if config is not None:
            assert (REPO_ROOT / config).is_file(), f"{shlex.join(command)}: no file {config}"


def all_commands() -> Iterator[list[str]]:
    yield from sh_commands()
    yield from inline_commands()


def test_the_readme_shows_commands() -> None:
    """The extraction finds what the README shows (else the checks below check nothing)."""
    shown = [shlex.join(command) for command in all_commands()]
    for expected in (
        "scripts/run.sh",
        "scripts/run.sh --config deploy/bridge.toml",
        "scripts/run.sh --mqtt-url mqtt://127.0.0.1:1883 --config deploy/bridge.toml",
        "scripts/hstream-bridge tail bridge_dead_letter",
        "scripts/test.sh -k rules -x",
        ".venv/bin/pytest tests/rules -q",
    ):
        assert expected in shown, f"{expected!r} not found among {shown}"


def command_id(command: list[str]) -> str:
    return " ".join(shlex.join(command).split())[:60]


@pytest.mark.parametrize("command", list(all_commands()), ids=command_id)
def test_a_readme_command_runs_as_written_from_the_repository_root(command: list[str]) -> None:
    check(command)


def test_the_check_catches_what_a_new_user_hit() -> None:
    """The README once said `--config bridge.toml`; there is no such file at the root."""
    with pytest.raises(AssertionError, match=r"no file bridge\.toml"):
        check(["scripts/run.sh", "--config", "bridge.toml"])
    with pytest.raises(pytest.fail.Exception, match="does not parse"):
        check(["hstream-bridge", "tail", "temps", "--fol"])
    with pytest.raises(AssertionError, match="does not exist"):
        check(["scripts/nothing.sh"])


def quickstart() -> tuple[list[str], list[list[str]], list[list[str]]]:
    """From the README's quick start: the run.sh arguments, the publishes and the tails."""
    start = README.index("## Quick start")
    section = README[start : README.index("\n## ", start + 1)]
    commands = [c for _, body in FENCE.findall(section) for c in commands_in(body)]
    (run,) = [c for c in commands if c[0] == "scripts/run.sh"]
    publishes = [c for c in commands if c[0] == "mosquitto_pub"]
    tails = [c for c in commands if c[:2] == ["scripts/hstream-bridge", "tail"]]
    assert publishes, commands
    assert tails, commands
    return run[1:], publishes, tails


def mosquitto_pub(args: list[str]) -> tuple[str, bytes, int]:
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("-q", type=int, default=0)
    options.add_argument("-t", required=True)
    options.add_argument("-m", required=True)
    parsed = options.parse_args(args)
    return parsed.t, parsed.m.encode(), parsed.q


async def test_the_quick_start_stores_a_reading_and_a_dead_letter_that_tail_shows(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """As a new user: start the bridge as the README says, publish its messages, run its
    `scripts/hstream-bridge tail` commands as written in a directory whose ./data is the
    bridge's data dir (from the repository root, that is the default ./data)."""
    run_args, publishes, tails = quickstart()
    data = tmp_path / "data"
    bridge = BridgeProcess(data, [*run_args, "--mqtt-url", mosquitto.url])
    await bridge.start()
    try:
        url = (data / "store" / "address").read_text().strip()
        assert url.startswith("hstream://127.0.0.1:")
        for args in (pub[1:] for pub in publishes):
            topic, payload, qos = mosquitto_pub(args)
            await asyncio.to_thread(
                publish, mosquitto.host, mosquitto.port, [(topic, payload)], qos=qos
            )
        # The broker acknowledged them; wait until the bridge has stored them too.
        await wait_for_records(url, "telemetry_berlin", 1)
        await wait_for_records(url, "bridge_dead_letter", 1)
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("HSTREAM_BRIDGE_HSTREAM_URL", "HSTREAM_BRIDGE_DATA_DIR")
        }
        outputs = {}
        for tail in tails:
            result = await asyncio.to_thread(
                subprocess.run,
                [str(REPO_ROOT / tail[0]), *tail[1:]],  # scripts/hstream-bridge, as written
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, result.stderr
            assert result.stderr == ""
            outputs[tail[2]] = result.stdout.splitlines()
    finally:
        assert await bridge.terminate() == 0
    assert not (data / "store" / "address").exists()  # removed on a clean exit

    (reading,) = outputs["telemetry_berlin"]
    _id, key, attributes, shown = reading.split("\t")
    assert key == "dev-7"
    assert '"mqtt.topic": "fleet/berlin/dev-7/telemetry"' in attributes
    assert shown == '{"t": 21.5}'
    (dead,) = outputs["bridge_dead_letter"]
    assert '"reason": "invalid_json"' in dead
    assert dead.endswith("\tnot json")
