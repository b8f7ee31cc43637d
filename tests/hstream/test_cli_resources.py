"""`hstream-bridge streams|subscriptions|tail` as subprocesses against a store subprocess."""

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator

import pytest

from bridge.hstream import HStreamClient, Record
from tests.support.store import REPO_ROOT, StoreProcess, subprocess_store


@pytest.fixture
async def store_process() -> AsyncIterator[StoreProcess]:
    async with subprocess_store() as process:
        yield process


def _env(url: str) -> dict[str, str]:
    # The URL comes from the environment, as the bridge's own settings do.
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HSTREAM_BRIDGE_HSTREAM_URL": url}


async def _cli(url: str, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.cli",
        *args,
        env=_env(url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_streams_create_list_delete(store_process: StoreProcess) -> None:
    url = store_process.url
    assert await _cli(url, "streams", "create", "temps", "--shards", "3", "--backlog", "60") == (
        0,
        "created stream temps (3 shards)\n",
        "",
    )
    code, out, _ = await _cli(url, "streams", "list")
    assert code == 0
    header, row = out.splitlines()
    assert header.split() == ["STREAM", "SHARDS", "REPLICATION", "BACKLOG_S"]
    assert row.split() == ["temps", "3", "1", "60"]

    code, _, err = await _cli(url, "streams", "create", "temps")
    assert code == 1
    assert err.startswith("error: ")
    assert "HStreamDB code 201" in err
    assert len(err.splitlines()) == 1

    assert (await _cli(url, "streams", "delete", "temps"))[0] == 0
    code, _, err = await _cli(url, "streams", "delete", "temps")
    assert (code, "HStreamDB code 200" in err) == (1, True)


async def test_subscriptions_create_list_delete(store_process: StoreProcess) -> None:
    url = store_process.url
    async with HStreamClient(url) as client:
        await client.create_stream("temps")
    code, out, err = await _cli(
        url, "subscriptions", "create", "temps_sub", "--stream", "temps",
        "--offset", "latest", "--ack-timeout", "30", "--max-unacked", "50",
    )  # fmt: skip
    assert (code, out, err) == (0, "created subscription temps_sub on temps\n", "")
    code, out, _ = await _cli(url, "subscriptions", "list")
    assert out.splitlines()[1].split() == ["temps_sub", "temps", "latest", "30", "50"]
    code, _, err = await _cli(url, "streams", "delete", "temps")
    assert (code, "HStreamDB code 202" in err) == (1, True)
    assert (await _cli(url, "subscriptions", "delete", "temps_sub"))[0] == 0
    code, _, err = await _cli(url, "subscriptions", "delete", "temps_sub")
    assert (code, "HStreamDB code 300" in err) == (1, True)


async def test_tail_prints_one_line_per_record_and_stops_at_the_limit(
    store_process: StoreProcess,
) -> None:
    url = store_process.url
    async with HStreamClient(url) as client:
        await client.create_stream("temps")
        ids = await client.append(
            "temps",
            [
                Record(b"21.5", key="site-1", attributes={"topic": "t/1"}),
                Record({"temp": 22.5}, key="site-2"),
                Record(b"\xff raw"),
            ],
        )
    code, out, err = await _cli(url, "tail", "temps")
    assert (code, err) == (0, "")
    lines = [line.split("\t") for line in out.splitlines()]
    assert lines == [
        [str(ids[0]), "site-1", '{"topic": "t/1"}', "21.5"],
        [str(ids[1]), "site-2", "{}", json.dumps({"temp": 22.5})],
        [str(ids[2]), "", "{}", "\\xff raw"],
    ]
    code, out, _ = await _cli(url, "tail", "temps", "--limit", "2")
    assert (code, len(out.splitlines())) == (0, 2)


async def test_tail_follow_prints_new_records_until_interrupted(
    store_process: StoreProcess,
) -> None:
    url = store_process.url
    async with HStreamClient(url) as client:
        await client.create_stream("temps", shard_count=2)
        await client.append("temps", [Record(b"old")])
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge.cli", "tail", "temps", "--from", "latest", "--follow",
            env=_env(url), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert process.stdout is not None
            # Append until the follower (starting up meanwhile) prints a record: it starts
            # from the tail it sees, so it may miss the first appends but not the later ones.
            line = b""
            for attempt in range(200):
                await client.append("temps", [Record(b"new-%d" % attempt, key=str(attempt))])
                try:
                    line = await asyncio.wait_for(process.stdout.readline(), 0.25)
                except TimeoutError:
                    continue
                break
            assert line.rstrip().split(b"\t")[-1].startswith(b"new-")
            process.send_signal(signal.SIGINT)
            assert await asyncio.wait_for(process.wait(), 30) == 130
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_unreachable_store_is_one_line_on_stderr_and_exit_1() -> None:
    code, out, err = await _cli("hstream://127.0.0.1:1", "streams", "list", "--timeout", "5")
    assert (code, out) == (1, "")
    assert err.startswith("error: ")
    assert len(err.splitlines()) == 1
    assert "HStreamUnavailable" in err
