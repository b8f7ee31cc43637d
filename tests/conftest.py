"""Fixtures shared across the test packages."""

from collections.abc import Iterator

import pytest

from tests.support.mosquitto import Mosquitto


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A fresh Mosquitto for one test: free port, own persistence, removed afterwards."""
    with Mosquitto() as broker:
        yield broker


@pytest.fixture(scope="session")
def shared_mosquitto() -> Iterator[Mosquitto]:
    """One Mosquitto for the whole run, for tests that neither restart it nor depend on its
    state; use a unique client id and topic per test."""
    with Mosquitto() as broker:
        yield broker
