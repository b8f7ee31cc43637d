"""Append throughput into the embedded store: our client against the official `hstreamdb` 0.5.0.

    .venv/bin/python -m bench.append                     # full table, ~2 minutes
    .venv/bin/python -m bench.append --seconds 1 --batches 1000 --skip-official

The store runs in a subprocess (`python -m bridge.hstream.store`), so client and server each have
a core. Every cell appends 200-byte records to a fresh 4-shard stream from one task per shard (so
four appends are in flight) for `--seconds`, bounded by `--max-records`, and counts what the
server acknowledged. Rows:

- ours append_encoded: the bridge's hot path, records encoded once beforehand (as the
  accumulator does when a message arrives), framed and sent per batch;
- ours append_batch: the same, ids left as protobuf until read (the sender never reads them);
- ours append(Record): the convenience path, encoding every record on every call;
- official append: `HStreamDBClient.append(stream, payloads, key=...)` (none or gzip; no zstd);
- official producer: its `BufferedProducer` (size trigger = batch bytes, one worker per shard).

The markdown table goes to stdout and to bench/results/append.md.
"""

import argparse
import asyncio
import contextlib
import logging
import random
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bridge.hstream import Compression, HStreamClient, Record, encode_raw
from tests.support.store import StoreProcess, subprocess_store

RECORD_BYTES = 200
RESULTS = Path(__file__).resolve().parent / "results" / "append.md"


@dataclass(frozen=True, slots=True)
class Cell:
    client: str
    batch: int
    compression: str
    records: int
    seconds: float
    cpu_seconds: float
    """CPU time of this (client) process during the cell: robust to a busy machine."""

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.rate * RECORD_BYTES / 1e6

    @property
    def cpu_us_per_record(self) -> float:
        return self.cpu_seconds / self.records * 1e6 if self.records else 0.0


def payload(i: int) -> bytes:
    """A 200-byte JSON reading as a device would send: fixed field names, varying values and a
    random hex blob, so it compresses about as well as real telemetry (zstd ~2x), not 50x."""
    text = f'{{"device":"dev-{i % 5000:05d}","seq":{i},"temp":{20 + (i % 97) / 10:.1f},"ok":true,'
    text += '"blob":"'
    blob = random.Random(i).randbytes(RECORD_BYTES).hex()
    return (text + blob[: RECORD_BYTES - len(text) - 2] + '"}').encode()


def keys_per_shard(shard_ids: list[int], shard_for: Callable[[str], int]) -> dict[int, str]:
    """A partition key that hashes to each shard."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < len(shard_ids):
        key = f"key-{i}"
        found.setdefault(shard_for(key), key)
        i += 1
    return found


async def run_workers(
    workers: list[Callable[[], Awaitable[int]]], seconds: float, max_records: int
) -> tuple[int, float, float]:
    """Run the append loops until the deadline: (records acknowledged, elapsed, CPU seconds)."""
    deadline = time.monotonic() + seconds
    per_worker = max(1, max_records // len(workers))
    total = 0

    async def loop(append_once: Callable[[], Awaitable[int]]) -> None:
        nonlocal total
        done = 0
        while time.monotonic() < deadline and done < per_worker:
            done += await append_once()
        total += done

    started, cpu = time.monotonic(), time.process_time()
    async with asyncio.TaskGroup() as group:
        for worker in workers:
            group.create_task(loop(worker))
    return total, time.monotonic() - started, time.process_time() - cpu


async def fresh_stream(client: HStreamClient, name: str, shards: int) -> None:
    """A new stream per cell (the official client caches shards forever, so never reuse a name),
    and the previous cell's stream deleted to keep the store small."""
    previous = f"bench_append_{int(name.rsplit('_', 1)[1]) - 1}"
    await client.delete_stream(previous, force=True, ignore_missing=True)
    await client.create_stream(name, shard_count=shards)


async def ours_encoded(
    client: HStreamClient,
    stream: str,
    batch: int,
    compression: Compression,
    args: Any,
    lazy_ids: bool = False,
) -> Cell:
    await fresh_stream(client, stream, args.shards)
    shard_ids = (await client.shard_map(stream)).shard_ids
    workers: list[Callable[[], Awaitable[int]]] = []
    for n, shard in enumerate(shard_ids * args.inflight):
        encoded = [encode_raw(payload(n * batch + i), key=f"k{n}") for i in range(batch)]

        async def once(shard: int = shard, encoded: list[bytes] = encoded) -> int:
            if lazy_ids:
                return len(await client.append_batch(stream, shard, encoded, compression))
            return len(await client.append_encoded(stream, shard, encoded, compression))

        workers.append(once)
    records, seconds, cpu = await run_workers(workers, args.seconds, args.max_records)
    name = "ours append_batch" if lazy_ids else "ours append_encoded"
    return Cell(name, batch, compression.name.lower(), records, seconds, cpu)


async def ours_records(client: HStreamClient, stream: str, batch: int, args: Any) -> Cell:
    await fresh_stream(client, stream, args.shards)
    shard_map = await client.shard_map(stream)
    keys = keys_per_shard(shard_map.shard_ids, shard_map.shard_for)
    workers: list[Callable[[], Awaitable[int]]] = []
    for n, key in enumerate(list(keys.values()) * args.inflight):
        records = [Record(payload(n * batch + i), key=key) for i in range(batch)]

        async def once(records: list[Record] = records) -> int:
            return len(await client.append(stream, records))

        workers.append(once)
    count, seconds, cpu = await run_workers(workers, args.seconds, args.max_records)
    return Cell("ours append(Record)", batch, "none", count, seconds, cpu)


async def official_append(
    official: Any, client: HStreamClient, stream: str, batch: int, gzip: bool, args: Any
) -> Cell:
    await fresh_stream(client, stream, args.shards)
    shard_map = await client.shard_map(stream)
    keys = keys_per_shard(shard_map.shard_ids, shard_map.shard_for)
    workers: list[Callable[[], Awaitable[int]]] = []
    for n, key in enumerate(list(keys.values()) * args.inflight):
        payloads = [payload(n * batch + i) for i in range(batch)]

        async def once(key: str = key, payloads: list[bytes] = payloads) -> int:
            ids = await official.append(
                stream, payloads, key=key, compresstype="gzip" if gzip else None
            )
            return len(list(ids))

        workers.append(once)
    records, seconds, cpu = await run_workers(workers, args.seconds, args.max_records)
    return Cell("official append", batch, "gzip" if gzip else "none", records, seconds, cpu)


async def official_producer(official: Any, client: HStreamClient, stream: str, batch: int,
                            args: Any) -> Cell:  # fmt: skip
    await fresh_stream(client, stream, args.shards)
    shard_map = await client.shard_map(stream)
    keys = list(keys_per_shard(shard_map.shard_ids, shard_map.shard_for).values())
    stored = 0

    class Counter:  # the producer calls these on the class itself
        @staticmethod
        def on_success(stream_name: str, payloads: list[Any], shard_id: int) -> None:
            nonlocal stored
            stored += len(payloads)

        @staticmethod
        def on_fail(stream_name: str, payloads: list[Any], shard_id: int, e: Any) -> None:
            print(f"official producer append failed: {e!r}", file=sys.stderr)

    producer = official.new_producer(
        append_callback=Counter,
        size_trigger=batch * RECORD_BYTES if batch > 1 else 0,
        workers=len(keys),
    )
    payloads = [payload(i) for i in range(batch * len(keys))]
    deadline = time.monotonic() + args.seconds
    per_key = max(1, args.max_records // len(keys))
    started, cpu = time.monotonic(), time.process_time()

    async def feed(key: str) -> None:
        done = 0
        while time.monotonic() < deadline and done < per_key:
            await producer.append(stream, payloads[done % len(payloads)], key=key)
            done += 1
            if batch == 1:  # no size trigger: every record is its own flush
                await producer.flush_by_key(stream, key)

    async with asyncio.TaskGroup() as group:
        for key in keys:
            group.create_task(feed(key))
    await producer.wait_and_close()
    elapsed, cpu = time.monotonic() - started, time.process_time() - cpu
    return Cell("official producer", batch, "none", stored, elapsed, cpu)


def table(cells: list[Cell]) -> str:
    ours = {(c.batch, c.compression): c for c in cells if c.client == "ours append_encoded"}
    lines = [
        "| client | batch | compression | records/s | MB/s | client CPU µs/record"
        " | rate: ours append_encoded ÷ this | CPU/record: this ÷ ours append_encoded |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        base = ours.get((c.batch, c.compression))
        ratio = cpu_ratio = ""
        if base and c.rate and base.cpu_us_per_record and base is not c:
            ratio = f"{base.rate / c.rate:.1f}x"
            cpu_ratio = f"{c.cpu_us_per_record / base.cpu_us_per_record:.1f}x"
        lines.append(
            f"| {c.client} | {c.batch} | {c.compression} | {c.rate:,.0f} | "
            f"{c.mb_per_s:.1f} | {c.cpu_us_per_record:.2f} | {ratio} | {cpu_ratio} |"
        )
    return "\n".join(lines)


async def bench(args: Any) -> list[Cell]:
    cells: list[Cell] = []

    def record(cell: Cell) -> None:
        cells.append(cell)
        print(
            f"  {cell.client:22} batch {cell.batch:5} {cell.compression:5}"
            f" {cell.rate:>12,.0f} rec/s {cell.mb_per_s:7.1f} MB/s"
            f" {cell.cpu_us_per_record:7.2f} CPU us/rec",
            file=sys.stderr,
            flush=True,
        )

    async with contextlib.AsyncExitStack() as stack:
        if args.store_url:
            url = args.store_url
        else:
            store: StoreProcess = await stack.enter_async_context(subprocess_store())
            url = store.url
        client = await stack.enter_async_context(HStreamClient(url, timeout=60))
        host, _, port = client.current_target.rpartition(":")
        official = None
        if not args.skip_official and {"official", "producer"} & set(args.rows):
            import hstreamdb

            official = await hstreamdb.insecure_client(host=host, port=int(port))
        names = (f"bench_append_{n}" for n in range(1_000_000))
        rows = args.rows
        for batch in args.batches:
            if "encoded" in rows:
                for compression in args.compressions:
                    record(await ours_encoded(client, next(names), batch, compression, args))
            if "batch" in rows:
                cell = await ours_encoded(client, next(names), batch, Compression.NONE, args, True)
                record(cell)
            if "records" in rows:
                record(await ours_records(client, next(names), batch, args))
            if official is not None and "official" in rows:
                record(await official_append(official, client, next(names), batch, False, args))
                if Compression.GZIP in args.compressions:
                    record(await official_append(official, client, next(names), batch, True, args))
            if official is not None and "producer" in rows:
                record(await official_producer(official, client, next(names), batch, args))
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.append", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="per cell (default 3)")
    parser.add_argument("--max-records", type=int, default=3_000_000, help="per cell bound")
    parser.add_argument(
        "--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 100, 1000]
    )
    parser.add_argument(
        "--compressions",
        type=lambda s: [Compression.parse(x) for x in s.split(",")],
        default=[Compression.NONE, Compression.ZSTD, Compression.GZIP],
    )
    parser.add_argument("--shards", type=int, default=4, help="shards per stream (default 4)")
    parser.add_argument("--inflight", type=int, default=1, help="append tasks per shard")
    parser.add_argument(
        "--rows",
        type=lambda s: s.split(","),
        default=["encoded", "batch", "records", "official", "producer"],
        help="which rows: encoded,batch,records,official,producer (default all)",
    )
    parser.add_argument("--skip-official", action="store_true")
    parser.add_argument("--store-url", help="use this store instead of starting one")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    logging.getLogger("hstreamdb").setLevel(logging.ERROR)  # "Empty payloads" on close

    command = shlex.join([".venv/bin/python", "-m", "bench.append", *(argv or sys.argv[1:])])
    cells = asyncio.run(bench(args))
    report = "\n".join(
        [
            "# Append throughput: embedded store (subprocess), 200-byte records",
            "",
            f"Command: `{command}`",
            "",
            f"{args.shards} shards, {args.shards * args.inflight} appends in flight,"
            f" {args.seconds:g} s per cell.",
            "",
            table(cells),
            "",
        ]
    )
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
