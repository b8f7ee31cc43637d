"""Fixtures for the client tests: a real embedded store on a free port, and a client to it."""

import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bridge.hstream import HStreamClient

if TYPE_CHECKING:
    from bridge.hstream.store import EmbeddedStore

_names = itertools.count()


@pytest.fixture
def name() -> str:
    """A stream/subscription name unique within the test run."""
    return f"t{os.getpid()}_{next(_names)}"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator["EmbeddedStore"]:
    from bridge.hstream.store import EmbeddedStore  # imported late: unit tests need no store

    async with EmbeddedStore(tmp_path / "store") as running:
        yield running


@pytest.fixture
async def client(store: "EmbeddedStore") -> AsyncIterator[HStreamClient]:
    async with HStreamClient(store.url) as connected:
        yield connected
