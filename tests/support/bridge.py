"""Running the bridge in tests: in-process (`running_bridge`) or as a process that can be killed.

Also reading back what reached a stream, and waiting on conditions with a deadline.
"""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bridge.hstream.client import HStreamClient
from bridge.hstream.errors import StreamNotFound
from bridge.hstream.records import ReceivedRecord
from bridge.service import Bridge
from bridge.settings import Settings
from tests.support.store import REPO_ROOT, free_port


def bridge_settings(data_dir: Path, mqtt_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "mqtt_url": mqtt_url,
        "data_dir": data_dir,
        "api_listen": "127.0.0.1:0",
        "client_id": f"bridge-{os.getpid()}-{time.monotonic_ns()}",
        "linger": 0.005,
        "retry_backoff_min": 0.05,
        "retry_backoff_max": 0.5,
        "shutdown_timeout": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


@contextlib.asynccontextmanager
async def running_bridge(settings: Settings) -> AsyncIterator[Bridge]:
    async with Bridge(settings) as bridge:
        try:
            yield bridge
        finally:
            await bridge.drain()


async def wait_until(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float, what: str = "condition"
) -> None:
    """Poll `predicate` every 20 ms until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


async def read_stream(url: str, stream: str) -> list[ReceivedRecord]:
    """Every record stored in `stream` up to now (empty when the stream does not exist)."""
    async with HStreamClient(url) as client:
        try:
            async with client.read_stream(stream) as reader:
                return [record async for record in reader]
        except StreamNotFound:
            return []


async def wait_for_records(
    url: str, stream: str, count: int, timeout: float = 30.0
) -> list[ReceivedRecord]:
    """Read `stream` until it holds at least `count` records."""
    deadline = time.monotonic() + timeout
    while True:
        records = await read_stream(url, stream)
        if len(records) >= count:
            return records
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{stream} has {len(records)} of {count} records after {timeout} s"
            )
        await asyncio.sleep(0.1)


class BridgeProcess:
    """`python -m bridge run ...` in a subprocess, with its API on a free port."""

    def __init__(self, data_dir: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.api_port = free_port()
        self.args = args
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / "bridge.log"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    async def start(self, timeout: float = 30.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "bridge",
            "run",
            "--data-dir",
            str(self.data_dir),
            "--api-listen",
            f"127.0.0.1:{self.api_port}",
            *self.args,
        ]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: ASYNC220 - returns at once
            command,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(self.env or {})},
        )
        log.close()
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float) -> None:
        async with httpx.AsyncClient(timeout=2.0) as http:

            async def ready() -> bool:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise AssertionError(f"bridge exited: {self.log_tail()}")
                try:
                    response = await http.get(f"{self.api_url}/ready")
                except httpx.HTTPError:
                    return False
                return response.status_code == 200

            await wait_until(ready, timeout, "the bridge to be ready")

    async def metrics(self) -> str:
        async with httpx.AsyncClient(timeout=5.0) as http:
            response = await http.get(f"{self.api_url}/metrics")
            return response.text

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    async def terminate(self, timeout: float = 20.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.to_thread(self.process.wait, timeout)

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
