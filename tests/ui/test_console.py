"""The console (/ui) in headless Chromium against the real bridge: real Mosquitto, the embedded
store, the API on a free port. Every wait is a bounded WebDriverWait on what the page shows.

Run: .venv/bin/pytest tests/ui -q (needs Debian's chromium and chromium-driver, which
scripts/bootstrap.sh --test installs).
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.support.bridge import bridge_settings
from tests.support.console import BridgeThread, chromium, set_viewport
from tests.support.mosquitto import Mosquitto, publish

TIMEOUT = 20.0  # seconds any one page condition may take
TOKEN = "console-test-token"


def wait_for(driver: Chrome, condition: Callable[[Chrome], Any], what: str) -> Any:
    return WebDriverWait(driver, TIMEOUT, poll_frequency=0.1).until(
        condition, f"timed out after {TIMEOUT} s waiting for {what}"
    )


def fill(form: WebElement, **values: str) -> None:
    for name, value in values.items():
        field = form.find_element(By.NAME, name)
        if field.tag_name == "select":
            Select(field).select_by_value(value)
        else:
            field.clear()
            field.send_keys(value)


def error_next_to(form: WebElement, name: str) -> WebElement:
    """The error slot of a form field: in the same `.field` as the input."""
    field = form.find_element(By.NAME, name)
    return field.find_element(By.XPATH, "ancestor::div[@class='field']//p[@data-error-for]")


def rule_row(driver: Chrome, rule_id: str) -> WebElement | None:
    rows = driver.find_elements(By.CSS_SELECTOR, f"#rules-table tr[data-rule-id='{rule_id}']")
    return rows[0] if rows else None


def tile_value(driver: Chrome, tile: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, f"#{tile} .tile-value").text)


def page_problems(driver: Chrome) -> list[str]:
    """Script errors and Content-Security-Policy violations in the browser's console."""
    problems = []
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    for entry in entries:
        message = str(entry["message"])
        # An answer with an error status (401, 422) is logged too: that is the API talking.
        if "Content Security Policy" in message or (
            entry["level"] == "SEVERE" and "Failed to load resource" not in message
        ):
            problems.append(message)
    return problems


def test_an_operator_creates_tries_watches_and_deletes_a_rule(
    console_bridge: BridgeThread, mosquitto: Mosquitto, browser: Chrome
) -> None:
    url = console_bridge.api_url
    browser.get(f"{url}/ui")
    wait_for(browser, lambda d: tile_value(d, "h-mqtt") == "Connected", "MQTT to show connected")
    assert tile_value(browser, "h-hstream") == "Reachable"
    assert tile_value(browser, "h-ready") == "Ready"
    assert browser.find_element(By.ID, "rules-empty").is_displayed()

    # Create a rule through the form: a bad filter first, refused with 422 next to the field.
    browser.find_element(By.ID, "new-rule").click()
    form = browser.find_element(By.ID, "rule-form")
    fill(form, id="telemetry", topic="a/#/b", stream="telemetry", key="${device}", payload="json")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    topic_error = error_next_to(form, "topic")
    wait_for(browser, lambda d: "#" in topic_error.text, "the 422 next to the topic field")
    assert "last level" in topic_error.text
    assert form.find_element(By.NAME, "topic").get_attribute("aria-invalid") == "true"
    assert error_next_to(form, "stream").text == ""
    fill(form, topic="fleet/{device}/t")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, lambda d: rule_row(d, "telemetry") is not None, "the new rule's row")
    assert not form.is_displayed()
    row = rule_row(browser, "telemetry")
    assert row is not None
    assert "fleet/{device}/t" in row.text
    assert "json, QoS 1" in row.text
    rules = httpx.get(f"{url}/rules").json()
    assert rules == [
        {
            "id": "telemetry",
            "topic": "fleet/{device}/t",
            "stream": "telemetry",
            "key": "${device}",
            "payload": "json",
            "qos": 1,
            "enabled": True,
        }
    ]

    # Dry runs: a good payload shows stream, key and record; a bad one the dead-letter reason.
    dry = browser.find_element(By.ID, "dry-run-form")
    result = browser.find_element(By.ID, "dry-run-result")
    fill(dry, topic="fleet/dev-7/t", payload='{"t": 21.5}')
    dry.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, lambda d: "stream telemetry" in result.text, "the dry run's route")
    assert "key dev-7" in result.text
    assert '"t": 21.5' in result.text
    fill(dry, payload="not json")
    dry.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(browser, lambda d: "invalid_json" in result.text, "the dead-letter reason")
    assert "dead letter" in result.text
    fill(dry, topic="fleet/+/t")
    dry.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    dry_topic_error = error_next_to(dry, "topic")
    wait_for(browser, lambda d: dry_topic_error.text != "", "the dry run's 422 on the topic")

    # A bad payload through the real broker: the dead letter appears in its panel.
    publish(mosquitto.host, mosquitto.port, [("fleet/d9/t", b"oops, not json")])
    letters = browser.find_element(By.ID, "dead-letters-table")
    wait_for(browser, lambda d: "fleet/d9/t" in letters.text, "the dead letter in its panel")
    newest = letters.find_element(By.CSS_SELECTOR, "tbody tr")
    assert "invalid_json" in newest.text
    assert "oops, not json" in newest.text
    assert "telemetry" in newest.text
    dead_cell = row.find_element(By.CSS_SELECTOR, "td[data-label='Dead letters/s']")
    wait_for(browser, lambda d: "1 total" in dead_cell.text, "the rule's dead-letter total")

    # Disable, then delete (two clicks: arm, confirm).
    row.find_element(By.CSS_SELECTOR, "input.switch").click()
    wait_for(
        browser,
        lambda d: httpx.get(f"{url}/rules/telemetry").json()["enabled"] is False,
        "the rule to be disabled",
    )
    delete = row.find_element(By.CSS_SELECTOR, "button.danger")
    delete.click()
    assert delete.text == "Confirm delete"
    assert rule_row(browser, "telemetry") is not None
    delete.click()
    wait_for(browser, lambda d: rule_row(d, "telemetry") is None, "the row to go")
    assert httpx.get(f"{url}/rules").json() == []
    assert page_problems(browser) == []


def test_with_an_api_token_the_page_asks_for_it_once_and_then_works(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings = bridge_settings(tmp_path / "bridge", mosquitto.url, api_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    rule = {"id": "guarded", "topic": "g/#", "stream": "guarded"}
    with BridgeThread(settings) as running, chromium() as browser:
        url = running.api_url
        assert httpx.post(f"{url}/rules", json=rule, headers=auth).status_code == 201
        browser.get(f"{url}/ui")  # the page itself needs no token
        dialog = browser.find_element(By.ID, "token-dialog")
        wait_for(browser, lambda d: dialog.is_displayed(), "the token dialog")
        assert rule_row(browser, "guarded") is None

        token_input = browser.find_element(By.ID, "token-input")
        token_input.send_keys("wrong")
        token_input.submit()
        error = browser.find_element(By.ID, "token-error")
        wait_for(browser, lambda d: error.is_displayed(), "the refusal of a wrong token")
        assert "refused" in error.text
        token_input.clear()
        token_input.send_keys(TOKEN)
        token_input.submit()
        wait_for(browser, lambda d: rule_row(d, "guarded") is not None, "the rules")
        assert not dialog.is_displayed()
        wait_for(browser, lambda d: "No dead letters" in d.page_source, "the dead letters")
        stored = browser.execute_script("return sessionStorage.getItem('hstream-bridge.api-token')")
        assert stored == TOKEN

        # The same tab keeps it: a reload asks nothing.
        browser.refresh()
        wait_for(browser, lambda d: rule_row(d, "guarded") is not None, "the rules after reload")
        assert not browser.find_element(By.ID, "token-dialog").is_displayed()
        # Never in a URL: no request the page made has it.
        urls = browser.execute_script(
            "return performance.getEntriesByType('resource').map((entry) => entry.name)"
        )
        assert any("/stats" in u for u in urls)
        assert not any(TOKEN in u for u in [*urls, browser.current_url])
        assert page_problems(browser) == []


def test_at_a_phones_width_nothing_scrolls_sideways(
    console_bridge: BridgeThread, browser: Chrome
) -> None:
    url = console_bridge.api_url
    rule = {"id": "phone", "topic": "sensors/{site}/{device}/temperature", "stream": "t_${site}"}
    assert httpx.post(f"{url}/rules", json=rule).status_code == 201
    set_viewport(browser, 390, 844)
    browser.get(f"{url}/ui")
    wait_for(browser, lambda d: rule_row(d, "phone") is not None, "the rule")
    wait_for(browser, lambda d: tile_value(d, "h-mqtt") == "Connected", "the health tiles")
    assert browser.execute_script("return window.innerWidth") == 390
    width = browser.execute_script("return document.documentElement.scrollWidth")
    assert width <= 390, f"the page is {width} px wide at 390"
    # The table became cards: its header row is hidden, each cell says what it is.
    assert not browser.find_element(By.CSS_SELECTOR, "#rules-table thead").is_displayed()
    row = rule_row(browser, "phone")
    assert row is not None
    assert row.find_element(By.CSS_SELECTOR, "td[data-label='Matched/s']").is_displayed()


def test_the_api_docs_render_with_no_network(console_bridge: BridgeThread, browser: Chrome) -> None:
    browser.get(f"{console_bridge.api_url}/docs")
    wait_for(
        browser,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 8,
        "Swagger UI to list the operations",
    )
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/rules", "/stats", "/dead-letters"} <= paths
    assert page_problems(browser) == []


def test_with_a_disk_buffer_its_use_and_backlog_show(
    mosquitto: Mosquitto, tmp_path: Path, browser: Chrome
) -> None:
    settings = bridge_settings(
        tmp_path / "bridge", mosquitto.url, buffer="disk", buffer_disk_bytes=64 << 20
    )
    with BridgeThread(settings) as running:
        browser.get(f"{running.api_url}/ui")
        disk = browser.find_element(By.ID, "h-disk")
        wait_for(browser, lambda d: disk.is_displayed(), "the disk buffer's tile")
        wait_for(browser, lambda d: "of 64 MiB" in disk.text, "the disk buffer's use")
        assert "backlog 0 records" in disk.text
        assert disk.get_attribute("data-state") == "info"
        assert page_problems(browser) == []


def test_the_console_shows_a_source_that_cannot_connect_and_this_replica(
    console_bridge: BridgeThread, browser: Chrome
) -> None:
    url = console_bridge.api_url
    # A real source whose database does not answer (nothing listens on port 1): its status is
    # the reader's own error, shown as the bridge reports it.
    body = {
        "id": "shop",
        "kind": "postgres",
        "dsn": "postgresql://cdc:hunter2@127.0.0.1:1/shop",
        "tables": ["public.orders"],
    }
    assert httpx.post(f"{url}/sources", json=body, timeout=10).status_code == 201
    browser.get(f"{url}/ui")

    def source_row(driver: Chrome) -> WebElement | None:
        rows = driver.find_elements(By.CSS_SELECTOR, "#sources-table tr[data-source-id='shop']")
        return rows[0] if rows and "error" in rows[0].text else None

    row = wait_for(browser, source_row, "the source's row in its error state")
    assert "public.orders" in row.text
    assert "postgres" in row.text
    assert "127.0.0.1:1" in row.text  # the reader names the database it cannot reach
    assert "hunter2" not in browser.page_source
    assert not browser.find_element(By.ID, "sources-empty").is_displayed()
    replicas = wait_for(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#cluster-table tbody tr"),
        "this replica in the replicas table",
    )
    assert len(replicas) == 1
    assert "alive" in replicas[0].text
    assert page_problems(browser) == []
