"""Why the disk buffer is a segment log of its own: durable appends, side by side, in one run.

    .venv/bin/python -m bench.disk_buffer                 # ~20 s
    .venv/bin/python -m bench.disk_buffer --records 50000 --group 100

Both candidates take the same records (200-byte encoded records with a stream name, rule id and
key, as intake makes them) in groups of `--group` records arriving together, as messages do off
one socket read, and report when each group is durable (fsync'd):

- segment log: `DiskBuffer.add()` per message, one write and one fsync per group commit;
- store engine: the embedded store's SQLite engine (WAL, synchronous=FULL, group commit), one
  append per message, as reusing it as the buffer would (records framed into batch payloads;
  the stream, rule and key would still have to be carried in each record).

Then the segment log is read back (what the forwarder does). Rates are records/s of this process
(one core); ratios matter more than the figures on a shared machine.
"""

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bridge.buffer import DiskBuffer, Entry
from bridge.hstream.records import encode_raw, frame_records
from bridge.hstream.shards import split_key_space
from bridge.hstream.store.engine import Engine, StreamMeta


def record(n: int) -> bytes:
    return encode_raw(b"%08d" % n + b"x" * 150, f"dev-{n % 100}", {"mqtt.topic": f"t/{n % 100}"})


async def segment_log(directory: Path, records: list[bytes], group: int) -> tuple[float, int]:
    buffer = DiskBuffer(directory, limit_bytes=1 << 34)
    await buffer.open()
    started = time.perf_counter()
    for i in range(0, len(records), group):
        futures = [
            buffer.add([Entry("telemetry", "rule", f"dev-{n % 100}", data)])
            for n, data in enumerate(records[i : i + group], start=i)
        ]
        await asyncio.gather(*futures)
    seconds = time.perf_counter() - started
    fsyncs = buffer.fsyncs_total
    await buffer.aclose()
    return seconds, fsyncs


async def read_back(directory: Path) -> tuple[float, int]:
    buffer = DiskBuffer(directory, limit_bytes=1 << 34)
    await buffer.open()
    started = time.perf_counter()
    after, count = 0, 0
    while True:
        got = await buffer.read(after, 1 << 20)
        if not got:
            break
        count += len(got)
        after = got[-1].seq
    seconds = time.perf_counter() - started
    await buffer.aclose()
    return seconds, count


async def store_engine(directory: Path, records: list[bytes], group: int) -> float:
    engine = Engine(directory)
    await engine.open()
    (shard,) = await engine.create_stream(StreamMeta("buffer", 1, 0, 1, 0), split_key_space(1))
    started = time.perf_counter()
    for i in range(0, len(records), group):
        await asyncio.gather(
            *(
                engine.append(shard.shard_id, 0, 1, frame_records([data]))
                for data in records[i : i + group]
            )
        )
    seconds = time.perf_counter() - started
    await engine.close()
    return seconds


async def run(count: int, group: int) -> None:
    records = [record(n) for n in range(count)]
    with tempfile.TemporaryDirectory(prefix="bench-buffer-", dir=".") as tmp:
        root = Path(tmp)
        log_s, fsyncs = await segment_log(root / "log", records, group)
        read_s, read = await read_back(root / "log")
        engine_s = await store_engine(root / "engine", records, group)
    print(f"{count} records of {len(records[0])} bytes, groups of {group}\n")
    print("| way | records/s | ratio to segment log |")
    print("|---|---:|---:|")
    print(f"| segment log, durable add | {count / log_s:,.0f} | 1.00 |")
    print(f"| store engine, durable append | {count / engine_s:,.0f} | {log_s / engine_s:.2f} |")
    print(f"| segment log, read back ({read}) | {read / read_s:,.0f} | |")
    print(f"\nsegment log: {fsyncs} fsyncs, {count / fsyncs:.0f} records per fsync")
    print(f"\nReproduce: `.venv/bin/python -m bench.disk_buffer --records {count} --group {group}`")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--group", type=int, default=100, help="messages arriving together")
    args = parser.parse_args(argv)
    asyncio.run(run(min(args.records, 1_000_000), max(1, args.group)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
