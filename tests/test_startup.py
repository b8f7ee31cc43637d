"""Starting the bridge: what it tells the operator and the other commands, and what it refuses
before it opens anything."""

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from bridge.service import Bridge
from bridge.settings import Settings
from tests.support.bridge import bridge_settings, running_bridge, wait_for_records
from tests.support.mosquitto import Mosquitto, publish

SEED = [{"id": "temps", "topic": "t/{site}", "stream": "temps_${site}"}]
EDITED = [{"id": "temps", "topic": "t/{site}", "stream": "temps_${site}", "key": "${site}"}]


def ignored_rules_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and "[[rules]]" in record.getMessage()
    ]


async def test_config_rules_that_differ_from_the_rules_file_are_named_in_a_warning(
    mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: an edit of the config's [[rules]] after the first start was silently ignored."""
    caplog.set_level(logging.WARNING, logger="bridge.service")
    rules_file = tmp_path / "rules.json"

    async def start(rules: list[dict[str, Any]]) -> list[str]:
        caplog.clear()
        settings = bridge_settings(tmp_path, mosquitto.url, rules=rules)
        async with running_bridge(settings) as bridge:
            assert [rule.model_dump(exclude_defaults=True) for rule in bridge.rules] == SEED
        return ignored_rules_warnings(caplog)

    assert await start(SEED) == []  # the first start: the config's rules seed the rules file
    assert rules_file.exists()
    assert await start(SEED) == []  # the same rules: nothing to say

    (warning,) = await start(EDITED)  # edited in the config: the rules file still wins
    assert str(rules_file) in warning
    assert "1 rules that differ from the rules file's 1" in warning
    assert "delete it to seed it from the config file again" in warning

    (warning,) = await start([{"id": "bad", "topic": "a/#/b", "stream": "s"}])
    assert str(rules_file) in warning
    assert "invalid" in warning

    assert await start([]) == []  # no [[rules]] in the config: nothing is ignored


async def test_the_embedded_store_address_is_in_the_data_dir_while_the_bridge_runs(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """`hstream-bridge tail` and the other resource commands find the store through it."""
    address = tmp_path / "store" / "address"
    settings = bridge_settings(tmp_path, mosquitto.url, rules=SEED)
    async with running_bridge(settings) as bridge:
        assert bridge.store is not None
        url = address.read_text().strip()
        assert url == bridge.store.url
        await publish_one(mosquitto)
        (record,) = await wait_for_records(url, "temps_x", 1)
        assert record.payload == b"21.5"
    assert not address.exists()


async def publish_one(mosquitto: Mosquitto) -> None:
    await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, [("t/x", b"21.5")])


async def test_what_the_mqtt_session_refuses_is_refused_before_anything_starts(
    tmp_path: Path,
) -> None:
    """The MQTT settings are made first in Bridge._start, before the API, the data dir and the
    store. (Settings checks the same things; model_construct skips those checks here.)"""
    data = tmp_path / "data"
    settings = Settings.model_construct(
        mqtt_url="tcp://emqx:1883", data_dir=data, api_listen="127.0.0.1:0"
    )
    with pytest.raises(ValueError, match="must start with mqtt://"):
        async with Bridge(settings):
            pass
    assert not data.exists()
