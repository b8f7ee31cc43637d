"""CDC sources in bridge processes that die: kill -9 mid-stream, two replicas on one source.

Two `hstream-bridge run` processes share one store process and one source; the database lock
lets one run it while the other stands by. The one running is SIGKILLed while a writer commits
transactions; the other must take over within 10 s, and every transaction must be stored, each
row's changes in commit order (a repeat of what was stored but not committed is allowed).
"""

import asyncio
import time
from pathlib import Path
from typing import Any

from tests.cdc.databases import Database, toml_sources
from tests.cdc.helpers import changes, first_seen, source_body, stream_of, wait_changes, wait_state
from tests.support.bridge import BridgeProcess, read_stream, wait_until
from tests.support.mosquitto import Mosquitto
from tests.support.store import StoreProcess, subprocess_store

KEYS = 10
WRITES = 1500


def _write(database: Database, start: int, stop: int) -> None:
    database.execute_each(
        f"UPDATE items SET n = {n} WHERE id = {n % KEYS}" for n in range(start, stop)
    )


async def _all_values(url: str, stream: str) -> list[dict[str, Any]]:
    """The stream's changes once every written value is in it."""
    found: list[dict[str, Any]] = []

    async def complete() -> bool:
        nonlocal found
        found = changes(await read_stream(url, stream))
        return {c["after"]["n"] for c in found} >= set(range(WRITES))

    await wait_until(complete, 30.0, f"every value in {stream}")
    return found


async def _bridge(
    tmp: Path, name: str, store: StoreProcess, broker: Mosquitto, config: Path
) -> BridgeProcess:
    args = [
        "--hstream-url", store.url, "--mqtt-url", broker.url, "--client-id", name,
        "--config", str(config), "--retry-backoff-min", "0.05", "--retry-backoff-max", "0.5",
    ]  # fmt: skip
    process = BridgeProcess(tmp / name, args)
    await process.start()
    return process


async def test_kill_9_of_the_running_replica_the_standby_takes_over_with_no_lost_change(
    tmp_path: Path, database: Database, shared_mosquitto: Mosquitto
) -> None:
    source_id, dsn, table = database.prepare(
        "CREATE TABLE items (id INT PRIMARY KEY, n INT NOT NULL)", "items"
    )
    values = ",".join(f"({k}, -1)" for k in range(KEYS))
    database.execute(f"INSERT INTO items VALUES {values}")
    config = tmp_path / "bridge.toml"
    config.write_text(toml_sources([source_body(source_id, database.kind, dsn, [table])]))
    stream = stream_of(source_id, "items")
    async with subprocess_store(tmp_path / "store") as store:
        first = await _bridge(tmp_path, "first", store, shared_mosquitto, config)
        second: BridgeProcess | None = None
        try:
            await wait_state(first.api_url, source_id, "streaming")
            second = await _bridge(tmp_path, "second", store, shared_mosquitto, config)
            await wait_state(second.api_url, source_id, "standby")
            await asyncio.to_thread(_write, database, 0, WRITES // 2)
            writer = asyncio.create_task(asyncio.to_thread(_write, database, WRITES // 2, WRITES))
            await wait_changes(store.url, stream, KEYS + WRITES // 2 + 50)
            first.kill()
            killed = time.monotonic()
            await wait_state(second.api_url, source_id, "streaming", timeout=15.0)
            takeover = time.monotonic() - killed
            print(f"\nstandby took over {takeover:.2f} s after kill -9")
            assert takeover < 10.0
            await writer
            found = await _all_values(store.url, stream)
        finally:
            if first.process is not None and first.process.poll() is None:
                first.kill()
            if second is not None:
                second.kill()
    by_key: dict[int, list[int]] = {}
    for change in found:
        row = change["after"]
        by_key.setdefault(row["id"], []).append(row["n"])
    for key, ns in by_key.items():
        assert first_seen(ns) == sorted(first_seen(ns)), f"key {key} out of order"
    print(
        f"{len(found)} records for {KEYS + WRITES} changes ({len(found) - KEYS - WRITES} repeats)"
    )
