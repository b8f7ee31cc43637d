"""Fixtures shared across the test packages."""

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mosquitto import Mosquitto


@pytest.fixture
def mosquitto() -> Iterator[Mosquitto]:
    """A fresh Mosquitto for one test: free port, own persistence, removed afterwards."""
    with Mosquitto() as broker:
        yield broker


@pytest.fixture
def password_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A Mosquitto that refuses anonymous clients; user `bridge` with password `secret`."""
    passwords = tmp_path / "passwords"
    command = ["mosquitto_passwd", "-c", "-b", str(passwords), "bridge", "secret"]
    subprocess.run(command, check=True, capture_output=True)
    passwords.chmod(0o600)
    config = f"allow_anonymous false\npassword_file {passwords}\n"
    with Mosquitto(tmp_path / "broker", extra_config=config) as broker:
        yield broker


@pytest.fixture(scope="session")
def shared_mosquitto() -> Iterator[Mosquitto]:
    """One Mosquitto for the whole run, for tests that neither restart it nor depend on its
    state; use a unique client id and topic per test."""
    with Mosquitto() as broker:
        yield broker
