"""What one Append RPC costs in CPU, client and store, by gRPC API and concurrency.

    .venv/bin/python -m bench.append_call                  # ~30 s
    .venv/bin/python -m bench.append_call --records 40 --calls 2000

The fan-out of bench/pipeline.py makes ~4,600 appends of ~43 records per 200,000 messages where
one stream makes ~500 of ~400: what is left of its extra cost is per call. This measures that
cost alone: one store process (`python -m bridge.hstream.store`), a stream of 16 shards, and
`--calls` Append calls of `--records` 170-byte records each (pre-encoded, as the bridge sends
them), spread over the shards, from
- `grpc.aio` (what the bridge uses), 1 and 16 calls in flight;
- the sync stub's `.future()` (the call runs in gRPC's threads, the answer is handed to asyncio
  with `call_soon_threadsafe`), 1 and 16 in flight;
- the sync stub called blocking, one at a time.
Client CPU is this process's (all threads) over the cell; store CPU is the store process's (in
clock ticks of 10 ms: use enough calls).
"""

import argparse
import asyncio
import shlex
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import psutil  # type: ignore[import-untyped]  # no types-psutil in the venv

from bridge.hstream import Compression, HStreamClient, encode_raw
from bridge.hstream._api import SERVICE_NAME
from bridge.hstream._wire import append_request, stream_field
from tests.support.store import subprocess_store

METHOD = f"/{SERVICE_NAME}/Append"


def cpu() -> float:
    return time.process_time()  # every thread of this process, to the nanosecond


def process_cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def cell(
    name: str,
    calls: int,
    concurrency: int,
    call: Callable[[bytes], Awaitable[Any]],
    requests: list[bytes],
    store: psutil.Process,
) -> str:
    per_worker = calls // concurrency

    async def worker(offset: int) -> None:
        for i in range(per_worker):
            await call(requests[(offset + i) % len(requests)])

    await call(requests[0])  # connected and warm
    started, client0, store0 = time.perf_counter(), cpu(), process_cpu(store)
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    seconds = time.perf_counter() - started
    done = per_worker * concurrency
    client_us = (cpu() - client0) / done * 1e6
    store_us = (process_cpu(store) - store0) / done * 1e6
    return f"| {name} | {concurrency} | {done / seconds:,.0f} | {client_us:.0f} | {store_us:.0f} |"


async def run(args: argparse.Namespace) -> None:
    rows = []
    async with subprocess_store() as store:
        assert store.pid is not None
        store_process = psutil.Process(store.pid)
        async with HStreamClient(store.url) as client:
            await client.create_stream("calls", shard_count=16)
            shards = [s.shard_id for s in await client.list_shards("calls")]
        target = store.url.split("://", 1)[1]
        record = encode_raw(b"x" * 170, key="dev-0042")
        field = stream_field("calls")
        requests = [
            append_request(field, shard, [record] * args.records, Compression.NONE)
            for shard in shards
        ]
        aio_channel = grpc.aio.insecure_channel(target)
        aio_append: Any = aio_channel.unary_unary(METHOD, request_serializer=None)
        sync_channel = grpc.insecure_channel(target)
        sync_append: Any = sync_channel.unary_unary(METHOD, request_serializer=None)
        loop = asyncio.get_running_loop()

        async def aio_call(request: bytes) -> Any:
            return await aio_append(request, timeout=30)

        async def future_call(request: bytes) -> Any:
            done: asyncio.Future[None] = loop.create_future()
            future = sync_append.future(request, timeout=30)

            def answered(_: object) -> None:
                loop.call_soon_threadsafe(done.set_result, None)

            future.add_done_callback(answered)
            await done
            return future.result()

        async def blocking_call(request: bytes) -> Any:
            return sync_append(request, timeout=30)  # blocks the loop: one at a time only

        try:
            for name, call, concurrency in (
                ("grpc.aio", aio_call, 1),
                ("grpc.aio", aio_call, 16),
                ("sync stub .future()", future_call, 1),
                ("sync stub .future()", future_call, 16),
                ("sync stub, blocking", blocking_call, 1),
            ):
                rows.append(
                    await cell(name, args.calls, concurrency, call, requests, store_process)
                )
        finally:
            await aio_channel.close()
            sync_channel.close()
    print(
        f"## One Append RPC: {args.records} records of 170 bytes, {args.calls} calls per row\n\n"
        "| client API | in flight | calls/s | client CPU us/call | store CPU us/call |\n"
        "|---|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n\n"
        f"Reproduce: `{shlex.join(['.venv/bin/python', '-m', 'bench.append_call', *sys.argv[1:]])}`"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per row (bounded)")
    parser.add_argument("--records", type=int, default=40, help="records per call")
    args = parser.parse_args(argv)
    if not 16 <= args.calls <= 100_000:
        parser.error("--calls must be in [16, 100000]")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
