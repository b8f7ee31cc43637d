"""A handler for MqttSource tests that records messages and acks, holds or fails them."""

import asyncio
from collections.abc import Awaitable
from typing import Literal

from bridge.mqtt import Message, MqttSettings
from tests.support.mosquitto import Mosquitto

Mode = Literal["ack", "done", "hold", "fail"]


class Collector:
    """`ack`: return None; `done`: return a completed future; `hold`: return a future kept in
    `held` for the test to resolve; `fail`: return a future that raises."""

    def __init__(self, mode: Mode = "ack") -> None:
        self.mode: Mode = mode
        self.messages: list[Message] = []
        self.held: list[asyncio.Future[None]] = []
        self._changed = asyncio.Event()

    def __call__(self, message: Message) -> Awaitable[None] | None:
        self.messages.append(message)
        self._changed.set()
        if self.mode == "ack":
            return None
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.mode == "done":
            future.set_result(None)
        elif self.mode == "fail":
            future.set_exception(RuntimeError("pipeline failed"))
        else:
            self.held.append(future)
        return future

    @property
    def payloads(self) -> list[bytes]:
        return [m.payload for m in self.messages]

    def release(self) -> None:
        for future in self.held:
            if not future.done():
                future.set_result(None)

    async def wait_count(self, count: int, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()

    async def wait_payloads(self, wanted: set[bytes], timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not wanted <= set(self.payloads):
                self._changed.clear()
                await self._changed.wait()


def settings_for(broker: Mosquitto, client_id: str, **overrides: object) -> MqttSettings:
    """Settings for tests: fast reconnects so broker restarts are quick to recover from."""
    values: dict[str, object] = {
        "url": broker.url,
        "client_id": client_id,
        "reconnect_min": 0.05,
        "reconnect_max": 0.5,
        "connect_timeout": 5.0,
    }
    values.update(overrides)
    return MqttSettings(**values)  # type: ignore[arg-type]


def numbered(topic: str, start: int, stop: int) -> list[tuple[str, bytes]]:
    return [(topic, str(i).encode()) for i in range(start, stop)]
