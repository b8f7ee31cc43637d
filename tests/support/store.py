"""Embedded HStreamDB-API stores for tests: in-process, or a subprocess that can be SIGKILLed.

Pytest-free, so benchmarks and scripts can use them too:

    async with inprocess_store() as store:            # EmbeddedStore on a temp dir
        client = await hstreamdb.insecure_client(host=store.host, port=store.port)

    async with subprocess_store() as proc:            # python -m bridge.hstream.store
        proc.kill()                                   # SIGKILL, at once
        await proc.restart()                          # same port, same data dir
"""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from bridge.hstream._api import HStreamApiStub, pb
from bridge.hstream.store import EmbeddedStore
from tests.support.net import free_port as free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def inprocess_store(
    data_dir: Path | None = None, **kwargs: Any
) -> AsyncIterator[EmbeddedStore]:
    """An `EmbeddedStore` on 127.0.0.1 (port chosen by the OS), on `data_dir` or a temp dir."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="store-")))
        async with EmbeddedStore(data_dir, "127.0.0.1:0", **kwargs) as store:
            yield store


async def wait_for_echo(address: str, timeout: float = 20.0, metadata: Any = None) -> None:
    """Return once a store at `address` answers Echo; raise TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    async with grpc.aio.insecure_channel(address) as channel:
        stub = HStreamApiStub(channel)
        while True:
            try:
                await stub.Echo(pb.EchoRequest(msg="ready"), timeout=1.0, metadata=metadata)
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"store at {address} did not answer Echo") from None
                await asyncio.sleep(0.05)
            else:
                return


class StoreProcess:
    """`python -m bridge.hstream.store` on a fixed port and data dir."""

    def __init__(self, data_dir: Path, port: int | None = None, args: tuple[str, ...] = ()):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.args = args
        self.log_path = data_dir.parent / f"{data_dir.name}.store.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"hstream://{self.address}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self, timeout: float = 20.0) -> None:
        self._process = self._spawn()
        try:
            await self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise

    def _spawn(self) -> "subprocess.Popen[bytes]":
        command = [
            sys.executable,
            "-m",
            "bridge.hstream.store",
            "--listen",
            self.address,
            "--data-dir",
            str(self.data_dir),
            "--log-level",
            "WARNING",
            *self.args,
        ]
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(command, stdout=log, stderr=log, env=env)

    async def _wait_ready(self, timeout: float) -> None:
        ready = asyncio.create_task(wait_for_echo(self.address, timeout))
        try:
            while not ready.done():
                if self._process is not None and self._process.poll() is not None:
                    raise RuntimeError(f"store exited early:\n{self.log_path.read_text()[-3000:]}")
                await asyncio.wait({ready}, timeout=0.1)
            await ready
        finally:
            ready.cancel()

    def kill(self) -> None:
        """SIGKILL the store (no clean shutdown) and reap it."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=10)

    async def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM the store; returns its exit code."""
        assert self._process is not None
        self._process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self._process.poll() is None:
            if time.monotonic() > deadline:
                self._process.kill()
                raise TimeoutError("store did not exit after SIGTERM")
            await asyncio.sleep(0.05)
        return self._process.returncode

    async def restart(self, timeout: float = 20.0) -> None:
        """Kill the store if it runs, then start it again on the same port and data dir."""
        self.kill()
        await self.start(timeout)


@contextlib.asynccontextmanager
async def subprocess_store(
    data_dir: Path | None = None, args: tuple[str, ...] = ()
) -> AsyncIterator[StoreProcess]:
    """A store subprocess that answers Echo; killed when the block ends."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="store-")))
            data_dir = data_dir / "data"
        process = StoreProcess(data_dir, args=args)
        await process.start()
        try:
            yield process
        finally:
            process.kill()


class FetchSession:
    """A raw StreamingFetch call: the first request registers `consumer`, `ack` sends acks.

    Use as `async with FetchSession(stub, "sub", "c1") as fetch: record = await fetch.next()`.
    Responses are read by a background task, so a `next` that times out leaves the call alive.
    """

    def __init__(self, stub: Any, subscription: str, consumer: str) -> None:
        self.subscription = subscription
        self.consumer = consumer
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        self._requests.put_nowait(
            pb.StreamingFetchRequest(subscriptionId=subscription, consumerName=consumer)
        )
        self._call = stub.StreamingFetch(self._request_stream())
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read_responses())

    async def _request_stream(self) -> AsyncIterator[Any]:
        while True:
            request = await self._requests.get()
            if request is None:
                return
            yield request

    async def _read_responses(self) -> None:
        try:
            async for response in self._call:
                self._responses.put_nowait(response.receivedRecords)
        except grpc.aio.AioRpcError as exc:
            self._responses.put_nowait(exc)
        except asyncio.CancelledError:
            self._responses.put_nowait(EOFError("the fetch stream was cancelled"))
            raise
        else:
            self._responses.put_nowait(EOFError("the fetch stream ended"))

    async def next(self, timeout: float = 10.0) -> Any:
        """The next `ReceivedRecord` (raises TimeoutError after `timeout`)."""
        item = await asyncio.wait_for(self._responses.get(), timeout)
        if isinstance(item, BaseException):
            self._responses.put_nowait(item)
            raise item
        return item

    def ack(self, record_ids: Any) -> None:
        self._requests.put_nowait(
            pb.StreamingFetchRequest(
                subscriptionId=self.subscription, consumerName=self.consumer, ackIds=record_ids
            )
        )

    async def finish(self, timeout: float = 10.0) -> None:
        """Half-close the requests and wait until the store ends the call.

        The store ends it only after it has read every request, so every ack sent before is
        applied when this returns.
        """
        self._requests.put_nowait(None)
        await asyncio.wait_for(asyncio.shield(self._reader), timeout)

    def cancel(self) -> None:
        self._call.cancel()
        self._reader.cancel()

    async def __aenter__(self) -> "FetchSession":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cancel()
