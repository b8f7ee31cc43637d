"""Fixtures: an in-process store, a raw gRPC stub to it, and the official client."""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import hstreamdb
import pytest

from bridge.hstream._api import HStreamApiStub
from bridge.hstream.store import EmbeddedStore
from tests.support.store import inprocess_store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    async with inprocess_store(tmp_path / "data") as running:
        yield running


@pytest.fixture
async def stub(store: EmbeddedStore) -> AsyncIterator[Any]:
    async with grpc.aio.insecure_channel(store.address) as channel:
        yield HStreamApiStub(channel)


@pytest.fixture
async def client(store: EmbeddedStore) -> AsyncIterator[Any]:
    official = await hstreamdb.insecure_client(host=store.host, port=store.port)
    async with official:
        yield official
