"""Screenshots of the console for the README: docs/console-desktop.png, console-narrow.png and
console-sources.png.

    .venv/bin/python scripts/screenshots.py [OUT_DIR]

Starts a Mosquitto and a real bridge (embedded store) in temporary directories, adds a few
rules, publishes for a few seconds (good payloads, and bad ones that become dead letters), runs
a dry run, adds two database sources (one whose server is not there: it shows the error; one
disabled), then photographs /ui in headless Chromium at 1280 x 800 (the top, and the sources
and replicas tables) and 390 x 844. Needs what
the browser tests need (Debian's chromium and chromium-driver); talks to 127.0.0.1 only.
"""

import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PUBLISH_SECONDS = 20.0  # the publisher stops by itself after this long, at the latest

RULES = [
    {
        "id": "temps",
        "topic": "sensors/{site}/{device}/temp",
        "stream": "temps_${site}",
        "key": "${device}",
    },
    {
        "id": "telemetry",
        "topic": "fleet/{device}/telemetry",
        "stream": "telemetry",
        "key": "${device}",
        "payload": "json",
    },
    {"id": "lines", "topic": "plant/{line}/#", "stream": "${line}", "key": "${topic}"},
    {"id": "frames", "topic": "frames/#", "stream": "frames", "qos": 0, "enabled": False},
]


def sources(unreachable_port: int) -> list[dict[str, object]]:
    """A PostgreSQL source whose server is not there (its row shows the error) and a disabled
    MariaDB one: the console's sources table without a database of the script's own."""
    return [
        {
            "id": "shop",
            "kind": "postgres",
            "dsn": f"postgresql://cdc@127.0.0.1:{unreachable_port}/shop",
            "tables": ["public.orders", "public.customers"],
        },
        {
            "id": "billing",
            "kind": "mysql",
            "dsn": f"mysql://cdc@127.0.0.1:{unreachable_port}/billing",
            "tables": ["billing.invoices"],
            "enabled": False,
        },
    ]


def main() -> None:
    sys.path.insert(0, str(REPO))
    import httpx
    from selenium.webdriver import Chrome
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.support.bridge import bridge_settings
    from tests.support.console import BridgeThread, chromium, set_viewport
    from tests.support.mosquitto import Mosquitto, Publisher
    from tests.support.net import free_port

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "docs"
    out.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()

    def ready_to_show(driver: Chrome) -> bool:
        letters = driver.find_element(By.ID, "dead-letters-table").text
        enabled = driver.find_element(By.CSS_SELECTOR, "#rules-table tr[data-rule-id=temps]")
        rates = enabled.find_element(By.CSS_SELECTOR, "td[data-label='Matched/s'] .rate")
        live = rates.text not in ("", "0", "\u2013")  # a rate, not "none yet"
        return live and "invalid_stream_name" in letters and "invalid_json" in letters

    def top(driver: Chrome) -> None:
        """Nothing focused, scrolled to the top (a click or a reload may have scrolled)."""
        driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0);")

    def publish_for_a_while(host: str, port: int) -> None:
        deadline = time.monotonic() + PUBLISH_SECONDS
        with Publisher(host, port) as publisher:
            n = 0
            while not stop.is_set() and time.monotonic() < deadline:
                batch = [(f"sensors/berlin/dev-{i}/temp", b"21.%d" % i) for i in range(8)]
                batch += [(f"sensors/paris/dev-{i}/temp", b"19.%d" % i) for i in range(4)]
                batch += [(f"fleet/truck-{i}/telemetry", b'{"speed": %d}' % i) for i in range(5)]
                batch += [("plant/line-2/press", b"ok")]
                if n % 10 == 3:
                    batch += [("fleet/truck-9/telemetry", b"speed=88")]  # not JSON
                if n % 25 == 7:
                    batch += [("plant/1st-line/press", b"ok")]  # a stream name can't start so
                publisher.publish_many(batch)
                n += 1
                time.sleep(0.2)

    with (
        tempfile.TemporaryDirectory(prefix="console-shots-") as work,
        Mosquitto(Path(work) / "mosquitto") as broker,
        BridgeThread(bridge_settings(Path(work) / "bridge", broker.url)) as bridge,
    ):
        url = bridge.api_url
        for rule in RULES:
            httpx.post(f"{url}/rules", json=rule).raise_for_status()
        for source in sources(free_port()):
            httpx.post(f"{url}/sources", json=source).raise_for_status()
        publisher = threading.Thread(
            target=publish_for_a_while, args=(broker.host, broker.port), daemon=True
        )
        publisher.start()
        try:
            with chromium(1280, 800) as browser:
                wait = WebDriverWait(browser, 30, poll_frequency=0.2)
                browser.get(f"{url}/ui")
                dry = browser.find_element(By.ID, "dry-run-form")
                dry.find_element(By.NAME, "topic").send_keys("fleet/truck-7/telemetry")
                dry.find_element(By.NAME, "payload").send_keys('{"speed": 72, "fuel": 0.4}')
                dry.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
                wait.until(ready_to_show, "dead letters of both kinds and live rates")
                top(browser)
                browser.save_screenshot(str(out / "console-desktop.png"))
                wait.until(
                    lambda d: (
                        "error" in d.find_element(By.ID, "sources-table").text.lower()
                        and d.find_elements(By.CSS_SELECTOR, "#cluster-table tbody tr")
                    ),
                    "the sources' states and the replica",
                )
                browser.execute_script(
                    "document.activeElement.blur();"
                    "document.getElementById('sources-section').scrollIntoView();"
                )
                browser.save_screenshot(str(out / "console-sources.png"))
                set_viewport(browser, 390, 844)
                browser.refresh()
                wait.until(
                    lambda d: (
                        "Connected" in d.find_element(By.ID, "h-mqtt").text
                        and len(d.find_elements(By.CSS_SELECTOR, "#rules-table tbody tr")) == 4
                    ),
                    "the page at a phone's width",
                )
                top(browser)
                browser.save_screenshot(str(out / "console-narrow.png"))
        finally:
            stop.set()
            publisher.join(PUBLISH_SECONDS)
    names = ("console-desktop.png", "console-sources.png", "console-narrow.png")
    print("wrote " + ", ".join(str(out / name) for name in names))


if __name__ == "__main__":
    main()
