"""Fixtures for the console's browser tests: a real bridge in a thread, headless Chromium."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver

from tests.support.bridge import bridge_settings
from tests.support.console import BridgeThread, chromium
from tests.support.mosquitto import Mosquitto


@pytest.fixture
def console_bridge(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[BridgeThread]:
    """The real bridge (embedded store, the test's Mosquitto), its API on a free port."""
    with BridgeThread(bridge_settings(tmp_path / "bridge", mosquitto.url)) as running:
        yield running


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium at a desktop's size, 1280 x 800."""
    with chromium(1280, 800) as driver:
        yield driver
