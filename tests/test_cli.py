"""`hstream-bridge run` as a process: clean shutdown on SIGTERM, clear errors for bad setups."""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.cli import build_parser
from bridge.hstream.store.__main__ import build_parser as build_store_parser
from tests.support.bridge import BridgeProcess, read_stream, wait_for_records, wait_until
from tests.support.mosquitto import Mosquitto, Publisher
from tests.support.store import REPO_ROOT, subprocess_store

RULES = '[[rules]]\nid = "tele"\ntopic = "tele/{dev}"\nstream = "tele"\nkey = "${dev}"\n'


def run_bridge(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", "run", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_store(
    *args: str, module: str = "bridge", timeout: float = 60
) -> "subprocess.CompletedProcess[str]":
    command = [sys.executable, "-m", module, *(["store"] if module == "bridge" else []), *args]
    return subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


def messages(count: int) -> list[tuple[str, bytes]]:
    return [(f"tele/d{n % 10}", json.dumps({"n": n}).encode()) for n in range(count)]


async def test_sigterm_while_the_store_is_down_exits_0_and_unstored_messages_come_again(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(RULES)
    async with subprocess_store(tmp_path / "store") as store:
        args = [
            "--mqtt-url", mosquitto.url,
            "--hstream-url", store.url,
            "--client-id", "sigterm-test",
            "--config", str(config),
            "--shutdown-timeout", "1",
            "--append-timeout", "1",
        ]  # fmt: skip
        bridge = BridgeProcess(tmp_path / "bridge", args)
        await bridge.start()
        with Publisher(mosquitto.host, mosquitto.port) as publisher:
            await asyncio.to_thread(publisher.publish_many, messages(1000)[:500])
            await wait_for_records(store.url, "tele", 500)
            store.kill()
            await asyncio.to_thread(publisher.publish_many, messages(1000)[500:])
            assert await bridge.terminate() == 0  # the flush times out; nothing was acked
            log = bridge.log_tail(200)
            assert "shutdown flush timed out" in log
            assert "Traceback" not in log
            await store.restart()
            await bridge.start()  # same client id: the broker delivers what was not acked
            records = await wait_for_records(store.url, "tele", 1000, timeout=60)
        got = {json.loads(r.payload)["n"] for r in records if isinstance(r.payload, bytes)}
        assert got == set(range(1000))
        assert await bridge.terminate() == 0


async def test_sigterm_under_load_flushes_and_loses_nothing(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(RULES)
    async with subprocess_store(tmp_path / "store") as store:
        args = [
            "--mqtt-url", mosquitto.url,
            "--hstream-url", store.url,
            "--client-id", "sigterm-load",
            "--config", str(config),
        ]  # fmt: skip
        bridge = BridgeProcess(tmp_path / "bridge", args)
        await bridge.start()
        total = 5000
        with Publisher(mosquitto.host, mosquitto.port) as publisher:
            sending = asyncio.create_task(
                asyncio.to_thread(publisher.publish_many, messages(total))
            )

            async def started() -> bool:
                return len(await read_stream(store.url, "tele")) > 200

            await wait_until(started, 30, "the first records to be stored")
            assert await bridge.terminate() == 0
            assert "stopping: intake stopped" in bridge.log_tail(200)
            await sending
        await bridge.start()
        records = await wait_for_records(store.url, "tele", total, timeout=60)
        got = [json.loads(r.payload)["n"] for r in records if isinstance(r.payload, bytes)]
        assert set(got) == set(range(total))
        print(f"\nduplicates after a SIGTERM under load: {len(got) - len(set(got))}")
        assert await bridge.terminate() == 0


def test_corrupt_rules_file_is_a_clear_error_naming_file_and_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "rules.json").write_text('{"version": 1, "rules": [\n  {"id": "a",,}\n]}\n')
    result = run_bridge("--data-dir", str(data), "--api-listen", "127.0.0.1:0")
    assert result.returncode == 2
    assert str(data / "rules.json") in result.stderr
    assert ":2:" in result.stderr  # the line of the error
    assert "Traceback" not in result.stderr


def test_api_on_a_public_address_without_a_token_is_refused(tmp_path: Path) -> None:
    result = run_bridge("--data-dir", str(tmp_path), "--api-listen", "0.0.0.0:0")
    assert result.returncode == 2
    assert "--api-token" in result.stderr
    assert "Traceback" not in result.stderr


def test_invalid_setting_names_the_flag(tmp_path: Path) -> None:
    result = run_bridge("--data-dir", str(tmp_path), "--buffer-bytes", "lots")
    assert result.returncode == 2
    # The flag first, then the variable and the TOML key: whichever way it was given.
    assert result.stderr.splitlines() == [
        "hstream-bridge: invalid setting --buffer-bytes (HSTREAM_BRIDGE_BUFFER_BYTES, "
        "buffer_bytes): Input should be a valid integer, unable to parse string as an integer "
        "(got 'lots')"
    ]


@pytest.mark.parametrize(
    ("flag", "value", "problem"),
    [
        ("--mqtt-url", "tcp://emqx:1883", "must start with mqtt:// or mqtts://"),
        ("--mqtt-url", "mqtt://emqx:99999", "has a bad port"),
        ("--hstream-url", "http://hserver:6570", "must start with hstream:// or hstreams://"),
        ("--store-listen", "127.0.0.1", "is not HOST:PORT"),
    ],
)
def test_a_bad_url_or_address_is_one_line_before_anything_starts(
    flag: str, value: str, problem: str, tmp_path: Path
) -> None:
    """Before: the API and the store came up first, then the bridge failed on the MQTT URL.
    Now the settings are refused before anything is opened: the API's port, held here, is
    never tried (that would be an "address in use" error) and the data dir is not made."""
    import socket

    data = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        result = run_bridge(
            "--data-dir", str(data), "--api-listen", f"127.0.0.1:{port}", flag, value
        )
        seconds = time.monotonic() - started
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    name = flag.removeprefix("--")
    setting = f"{flag} (HSTREAM_BRIDGE_{name.replace('-', '_').upper()}, {name.replace('-', '_')})"
    assert line.startswith(f"hstream-bridge: invalid setting {setting}: "), line
    assert problem in line
    assert str(port) not in line
    assert not data.exists()
    assert seconds < 10  # the interpreter and its imports; nothing is waited for


def test_settings_that_go_together_are_refused_naming_both_flags(tmp_path: Path) -> None:
    cert = tmp_path / "client.pem"
    cert.write_text("")
    result = run_bridge(
        "--data-dir", str(tmp_path / "data"),
        "--mqtt-url", "mqtts://127.0.0.1:8883",
        "--mqtt-cert-file", str(cert),
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "hstream-bridge: invalid settings: --mqtt-cert-file and --mqtt-key-file go together"
        " (a client certificate and its key)"
    ]
    assert not (tmp_path / "data").exists()


async def test_store_command_serves_the_api_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    from tests.support.store import free_port, wait_for_echo

    port = free_port()
    process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        [
            sys.executable,
            "-m",
            "bridge",
            "store",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(tmp_path / "store"),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await wait_for_echo(f"127.0.0.1:{port}", timeout=20)
        assert (tmp_path / "store").is_dir()
    finally:
        process.terminate()
        output, _ = await asyncio.to_thread(process.communicate, timeout=20)
    assert process.returncode == 0, output.decode()


async def test_rules_made_over_http_survive_kill_9(mosquitto: Mosquitto, tmp_path: Path) -> None:
    import httpx

    bridge = BridgeProcess(tmp_path / "bridge", ["--mqtt-url", mosquitto.url])
    await bridge.start()
    made = [
        {"id": f"r{n}", "topic": f"k9/{n}/{{dev}}", "stream": f"k9_{n}", "key": "${dev}"}
        for n in range(5)
    ]
    async with httpx.AsyncClient(base_url=bridge.api_url, timeout=5) as http:
        for body in made:
            assert (await http.post("/rules", json=body)).status_code == 201
        assert (await http.delete("/rules/r3")).status_code == 204
        expected = (await http.get("/rules")).json()
    bridge.kill()  # right after the last answer: the change must already be on disk
    await bridge.start()
    async with httpx.AsyncClient(base_url=bridge.api_url, timeout=5) as http:
        assert (await http.get("/rules")).json() == expected
    assert [rule["id"] for rule in expected] == ["r0", "r1", "r2", "r4"]
    assert await bridge.terminate() == 0


def test_wrong_mqtt_password_is_a_clear_error(password_broker: Mosquitto, tmp_path: Path) -> None:
    result = run_bridge(
        "--data-dir", str(tmp_path / "data"),
        "--api-listen", "127.0.0.1:0",
        "--mqtt-url", password_broker.url,
        "--mqtt-username", "bridge",
        "--mqtt-password", "wrong",
    )  # fmt: skip
    assert result.returncode == 2
    assert "broker refused the connection" in result.stderr
    assert "Traceback" not in result.stderr


async def test_mqtt_311_with_a_password_from_the_environment_stores_messages(
    password_broker: Mosquitto, tmp_path: Path
) -> None:
    broker = password_broker
    config = tmp_path / "bridge.toml"
    config.write_text(RULES)
    args = [
        "--mqtt-url", broker.url,
        "--mqtt-protocol", "3.1.1",
        "--mqtt-username", "bridge",
        "--config", str(config),
        "--store-listen", "127.0.0.1:0",
    ]  # fmt: skip
    env = {"HSTREAM_BRIDGE_MQTT_PASSWORD": "secret"}
    bridge = BridgeProcess(tmp_path / "bridge", args, env=env)
    await bridge.start()
    with Publisher(
        broker.host, broker.port, protocol=4, username="bridge", password="secret"
    ) as publisher:
        await asyncio.to_thread(publisher.publish_many, messages(300))

    async def stored() -> bool:
        text = await bridge.metrics()
        return 'hstream_bridge_records_success_total{rule="tele",stream="tele"} 300.0' in text

    await wait_until(stored, 30, "300 records stored")
    assert await bridge.terminate() == 0


async def test_ports_in_use_are_one_line_errors(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for flags in (
            ["--api-listen", f"127.0.0.1:{port}"],
            ["--api-listen", "127.0.0.1:0", "--store-listen", f"127.0.0.1:{port}"],
        ):
            result = await asyncio.to_thread(
                run_bridge, "--data-dir", str(tmp_path / "data"), *flags
            )
            assert result.returncode == 2, result.stderr
            assert f"127.0.0.1:{port}" in result.stderr
            assert "Traceback" not in result.stderr


def all_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from all_parsers(sub)


def test_no_parser_accepts_abbreviated_flags() -> None:
    parsers = [*all_parsers(build_parser()), build_store_parser()]
    names = {parser.prog for parser in parsers}
    for command in ("run", "store", "streams create", "subscriptions delete", "tail"):
        assert f"hstream-bridge {command}" in names
    assert [p.prog for p in parsers if p.allow_abbrev] == []


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["run", "--buffer-d", "5"], "--buffer-d"),  # of --buffer-disk-bytes
        (["run", "--api-list", "127.0.0.1:0"], "--api-list"),
        (["store", "--list", "127.0.0.1:0"], "--list"),
        (["store", "--data", "elsewhere"], "--data"),
        (["streams", "list", "--hstream", "hstream://127.0.0.1:1"], "--hstream"),
        (["tail", "temps", "--fol"], "--fol"),
        (["--vers", "run"], "--vers"),
    ],
)
def test_an_abbreviated_flag_is_an_unrecognized_argument(
    argv: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert f"unrecognized arguments: {flag}" in error


def test_the_store_module_refuses_abbreviated_flags_too(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_store_parser().parse_args(["--list", "127.0.0.1:0", "--data-dir", "d"])
    assert exited.value.code == 2
    assert "unrecognized arguments: --list" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["bridge", "bridge.hstream.store"])
@pytest.mark.parametrize("listen", ["0.0.0.0:0", "[::]:0"])
def test_store_beyond_loopback_without_auth_or_tls_is_refused(
    module: str, listen: str, tmp_path: Path
) -> None:
    data = tmp_path / "store"
    result = run_store("--listen", listen, "--data-dir", str(data), module=module)
    assert result.returncode == 2, result.stderr
    assert "without authentication or TLS" in result.stderr
    for flag in ("--username", "--password", "--tls-cert", "--tls-key"):
        assert flag in result.stderr
    assert "Traceback" not in result.stderr
    assert not data.exists()  # refused before anything was opened


def test_store_username_without_a_password_is_refused(tmp_path: Path) -> None:
    result = run_store(
        "--listen", "0.0.0.0:0", "--data-dir", str(tmp_path / "s"), "--username", "u"
    )
    assert result.returncode == 2
    assert "--username needs --password" in result.stderr


async def test_store_beyond_loopback_with_basic_auth_is_served(tmp_path: Path) -> None:
    from tests.support.store import free_port, wait_for_echo

    port = free_port()
    command = [
        sys.executable, "-m", "bridge", "store",
        "--listen", f"0.0.0.0:{port}",
        "--data-dir", str(tmp_path / "store"),
        "--username", "u",
        "--password", "p",
    ]  # fmt: skip
    process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        await wait_for_echo(
            f"127.0.0.1:{port}", timeout=20, metadata=(("authorization", "Basic dTpw"),)
        )
    finally:
        process.terminate()
        output, _ = await asyncio.to_thread(process.communicate, timeout=20)
    assert process.returncode == 0, output.decode()


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--hstream-url", "hstream://bridge:topsecret@", "--api-listen", "127.0.0.1:0"],
        ["run", "--mqtt-url", "mqtt://bridge:topsecret@emqx/extra", "--api-listen", "127.0.0.1:0"],
        ["streams", "list", "--hstream-url", "hstream://bridge:topsecret@"],
    ],
)
def test_a_bad_url_is_reported_without_its_password(argv: list[str], tmp_path: Path) -> None:
    data = ["--data-dir", str(tmp_path)] if argv[0] == "run" else []
    result = subprocess.run(
        [sys.executable, "-m", "bridge", *argv, *data],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode in (1, 2), result.stderr
    assert "bridge:***@" in result.stderr  # the URL is named, so the user can find it
    assert "topsecret" not in result.stderr + result.stdout


@pytest.mark.parametrize("command", [["tail", "temps"], ["streams", "list"]])
def test_resource_commands_find_the_embedded_store_through_the_data_dir(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --hstream-url: the address `hstream-bridge run` left in DATA_DIR/store/address
    (./data by default), else hstream://127.0.0.1:6570; a URL given wins over the file."""
    from bridge.cli.resources import DEFAULT_URL, resolve_url
    from bridge.store_address import address_path, write_address

    monkeypatch.delenv("HSTREAM_BRIDGE_HSTREAM_URL", raising=False)
    monkeypatch.delenv("HSTREAM_BRIDGE_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_url(build_parser().parse_args(command)) == (DEFAULT_URL, None)

    write_address(Path("data"), "hstream://127.0.0.1:41234")
    found = ("hstream://127.0.0.1:41234", address_path(Path("data")))
    assert resolve_url(build_parser().parse_args(command)) == found
    elsewhere = tmp_path / "elsewhere"
    write_address(elsewhere, "hstream://127.0.0.1:41235")
    args = build_parser().parse_args([*command, "--data-dir", str(elsewhere)])
    assert resolve_url(args) == ("hstream://127.0.0.1:41235", address_path(elsewhere))
    monkeypatch.setenv("HSTREAM_BRIDGE_DATA_DIR", str(elsewhere))
    assert resolve_url(build_parser().parse_args(command))[0] == "hstream://127.0.0.1:41235"

    given = [*command, "--hstream-url", "hstream://h:6570"]
    assert resolve_url(build_parser().parse_args(given)) == ("hstream://h:6570", None)
    monkeypatch.setenv("HSTREAM_BRIDGE_HSTREAM_URL", "hstream://env:6570")
    assert resolve_url(build_parser().parse_args(command)) == ("hstream://env:6570", None)


def test_a_stale_address_file_is_named_in_the_error(tmp_path: Path) -> None:
    """A bridge killed with -9 leaves the file behind: the error says where the URL came from."""
    from bridge.store_address import write_address
    from tests.support.store import free_port

    write_address(tmp_path / "data", f"hstream://127.0.0.1:{free_port()}")
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "tail", "temps", "--timeout", "2"],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("HSTREAM_BRIDGE_")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert "is from data/store/address: is the `hstream-bridge run` that wrote it running?" in line
