"""The console in a real browser: a bridge in a thread of its own, and headless Chromium.

Selenium blocks, and the bridge (uvicorn included) runs on an asyncio loop, so they cannot
share a thread: `BridgeThread` runs `running_bridge` on its own loop in a background thread,
and the test or script drives the browser from its own thread.

The browser is Debian's `chromium` with its `chromium-driver` (scripts/bootstrap.sh installs
them), given to Selenium by path: Selenium Manager never looks for or downloads a browser or a
driver (SE_OFFLINE is set as well). Pytest-free, so scripts/screenshots.py uses it too.
"""

import asyncio
import concurrent.futures
import os
import tempfile
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

from bridge.service import Bridge
from bridge.settings import Settings
from tests.support.bridge import running_bridge

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
START_TIMEOUT = 60.0

T = TypeVar("T")

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # root in a container has no user namespace for the sandbox
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


class BridgeThread:
    """A real `Bridge` on an event loop in a background thread; `with` it.

    `api_url` is its HTTP API; `run(coroutine)` runs a coroutine on the bridge's loop (to read
    a stream, say) and returns its result.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bridge: Bridge | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, name="bridge", daemon=True)

    @property
    def api_url(self) -> str:
        assert self.bridge is not None
        assert self.bridge.api_url is not None
        return self.bridge.api_url

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            if not self._started.done():
                self._started.set_exception(exc)
            raise

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with running_bridge(self.settings) as bridge:
            self.bridge = bridge
            self._started.set_result(None)
            await self._stop.wait()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    def __enter__(self) -> "BridgeThread":
        self._thread.start()
        self._started.result(START_TIMEOUT)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_TIMEOUT)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found (apt-get install {package}, or scripts/bootstrap.sh --test)"
    return None


@contextmanager
def chromium(width: int = 1280, height: int = 800) -> Iterator[webdriver.Chrome]:
    """Headless Chromium with a `width` x `height` viewport and its own throw-away profile.

    The browser's console messages are kept (`driver.get_log("browser")`), so a test can see
    Content-Security-Policy violations and script errors.
    """
    missing = browser_missing()
    if missing is not None:
        raise FileNotFoundError(missing)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: never download anything
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        options = Options()
        options.binary_location = str(CHROMIUM)
        for flag in CHROMIUM_FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={width},{height}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(
            options=options, service=Service(executable_path=str(CHROMEDRIVER))
        )
        try:
            set_viewport(driver, width, height)
            yield driver
        finally:
            driver.quit()


def set_viewport(driver: webdriver.Chrome, width: int, height: int) -> None:
    """Emulate a `width` x `height` screen (a window cannot be made narrower than ~500 px)."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )
