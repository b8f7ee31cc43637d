"""End to end: the bridge's memory stays within its byte budget plus a constant under 100,000
distinct ~1 KiB topics (each also the partition key of a 4-shard stream).

Before the caches were bounded in bytes, the router's header cache (65,536 entries) and the
shard key cache (65,536 entries per stream) kept the last 65,536 of these topics: ~3.2 KiB an
entry (topic, encoded header) and ~1.1 KiB, about 280 MB at the cap, whatever `--buffer-bytes`
said; this test measured the bridge's RSS 250 MiB over its baseline then.
"""

import asyncio
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no types-psutil in the venv

from bench._watch import SAMPLE_INTERVAL, Watch
from bridge.hstream._api import pb
from bridge.hstream.records import decompress
from bridge.hstream.store.engine import BATCH_BITS, DB_FILE
from tests.support.bridge import BridgeProcess, wait_for_records
from tests.support.mosquitto import Mosquitto, Publisher
from tests.support.store import subprocess_store

MESSAGES = 100_000
TOPIC_LENGTH = 1000
BUFFER_BYTES = 8 * 1024 * 1024
# What the bridge process may grow by on top of its baseline (taken after a warm-up) and the
# buffer. Measured on the dev machine (2 cores, CPython 3.11, ~5,000 msg/s): with the byte-bounded
# caches the peak RSS was 7.7-14.6 MiB over the baseline in five runs (8 MiB header cache, 1 MiB
# shard key cache, the records buffered, socket buffers, allocator slack); with the old
# count-bounded caches it was 249-252 MiB over it. 24 MiB leaves room for a slower machine (a
# fuller buffer) and still fails the old caches by far.
SLACK_BYTES = 24 * 1024 * 1024


def topics(start: int, count: int) -> Iterator[tuple[str, bytes]]:
    for n in range(start, start + count):
        prefix = f"mem/{n:08}/"
        yield prefix + "t" * (TOPIC_LENGTH - len(prefix)), b"%d" % n


def publish_in_chunks(publisher: Publisher, start: int, chunk: int = 20_000) -> int:
    """Publish MESSAGES from `start` on; in chunks, as paho's message ids are 16 bits wide."""
    sent = 0
    for first in range(start, start + MESSAGES, chunk):
        count = min(chunk, start + MESSAGES - first)
        sent += publisher.publish_many(topics(first, count), qos=1, timeout=60.0)
    return sent


def stored_payloads(data_dir: Path, stream: str) -> list[bytes]:
    """Every record payload of `stream`, read from the store's SQLite file (read-only, beside
    the running store: much faster than 100,000 records through gRPC)."""
    uri = f"file:{data_dir / DB_FILE}?mode=ro"
    with sqlite3.connect(uri, uri=True) as conn:
        shard_ids = [
            row[0] for row in conn.execute("SELECT id FROM shards WHERE stream = ?", (stream,))
        ]
        payloads: list[bytes] = []
        for shard_id in shard_ids:
            rows = conn.execute(
                "SELECT compression, payload FROM records WHERE pos >> ? = ?",
                (BATCH_BITS, shard_id),
            )
            for compression, payload in rows:
                batch = pb.BatchHStreamRecords()
                batch.ParseFromString(decompress(payload, compression))
                payloads.extend(record.payload for record in batch.records)
    return payloads


async def test_rss_stays_within_the_budget_under_100k_distinct_long_topics(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with subprocess_store(tmp_path / "store") as store:
        config = tmp_path / "bridge.toml"
        config.write_text(
            '[[rules]]\nid = "mem"\ntopic = "mem/#"\nstream = "mem"\nkey = "${topic}"\n'
            'payload = "raw"\n'
        )
        args = [
            "--mqtt-url", mosquitto.url,
            "--hstream-url", store.url,
            "--client-id", "memory-test",
            "--config", str(config),
            "--buffer-bytes", str(BUFFER_BYTES),
            "--stream-shards", "4",
            "--log-level", "warning",
        ]  # fmt: skip
        bridge = BridgeProcess(tmp_path / "bridge", args)
        await bridge.start()
        try:
            assert bridge.process is not None
            with Publisher(mosquitto.host, mosquitto.port) as publisher:
                # Warm up: the stream is created, its shards looked up, the channels open.
                warm = 1000
                await asyncio.to_thread(publisher.publish_many, topics(0, warm))
                await wait_for_records(store.url, "mem", warm)
                await asyncio.sleep(0.5)
                process = psutil.Process(bridge.process.pid)
                baseline = process.memory_info().rss
                watch = Watch({"bridge": bridge.process.pid})  # peak RSS, sampled every 50 ms
                watch.start()
                started = time.monotonic()
                try:
                    sent = await asyncio.to_thread(publish_in_chunks, publisher, warm)
                    elapsed = time.monotonic() - started
                    await asyncio.sleep(0.5)
                finally:
                    peak = watch.stop()["bridge"].peak_rss
                after = process.memory_info().rss
            assert sent == MESSAGES
            # Every PUBACK came back, so every record is stored; check it from the store's file.
            payloads = stored_payloads(store.data_dir, "mem")
            assert {int(p) for p in payloads} == set(range(warm + MESSAGES))
            assert len(payloads) >= warm + MESSAGES
            mib = 1024 * 1024
            print(
                f"\n{MESSAGES} messages of {TOPIC_LENGTH}-char topics in {elapsed:.1f} s"
                f" ({MESSAGES / elapsed:.0f} msg/s); bridge RSS baseline {baseline / mib:.1f} MiB,"
                f" peak {peak / mib:.1f} MiB (+{(peak - baseline) / mib:.1f}),"
                f" after {after / mib:.1f} MiB (+{(after - baseline) / mib:.1f})"
                f" (sampled every {SAMPLE_INTERVAL * 1000:.0f} ms);"
                f" budget {BUFFER_BYTES / mib:.0f} MiB, slack {SLACK_BYTES / mib:.0f} MiB"
            )
            assert peak <= baseline + BUFFER_BYTES + SLACK_BYTES
            assert await bridge.terminate() == 0
        finally:
            if bridge.process is not None and bridge.process.poll() is None:
                bridge.kill()
