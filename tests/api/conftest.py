import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest

from bridge.api import serve_api
from bridge.cdc.config import Source
from rules import Rule
from tests.api.memory_bridge import ApiTestSettings, MemoryBridge

TOKEN = "s3cret-token"

TEMPS = {
    "id": "temps",
    "topic": "sensors/{site}/+/temp",
    "stream": "temps_${site}",
    "key": "${site}",
    "payload": "raw",
    "qos": 1,
    "enabled": True,
}

SOURCE_X = {"id": "x", "kind": "postgres", "dsn": "postgresql://u@h/d", "tables": ["a.b"]}


@contextlib.asynccontextmanager
async def served(
    bridge: MemoryBridge, token: str | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """A real uvicorn on a free 127.0.0.1 port serving `bridge`, and a client for it."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        serve_api(bridge) as url,
        httpx.AsyncClient(base_url=url, headers=headers, timeout=10.0) as client,
    ):
        yield client


@pytest.fixture
def bridge() -> MemoryBridge:
    return MemoryBridge(rules=[Rule.model_validate(TEMPS)])


@pytest.fixture
async def client(bridge: MemoryBridge) -> AsyncIterator[httpx.AsyncClient]:
    async with served(bridge) as client:
        yield client


@pytest.fixture
def secured_bridge() -> MemoryBridge:
    bridge = MemoryBridge(ApiTestSettings(api_token=TOKEN), rules=[Rule.model_validate(TEMPS)])
    bridge.sources.append(Source.model_validate(SOURCE_X))
    return bridge
