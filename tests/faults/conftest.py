"""The fault-injection rig: Mosquitto <- MQTT proxy <- bridge -> gRPC fault proxy -> store.

The proxies record what the bridge acknowledged and inject the faults; the store is read
directly to see what was really stored. At the end of the run, the scenarios' ledgers are
printed as one table (scenario, messages, acknowledged, stored, dead letters, duplicates).
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from bridge.hstream.store import EmbeddedStore
from tests.faults.ledger import RESULTS
from tests.support.grpc_faults import FaultProxy
from tests.support.mosquitto import Mosquitto
from tests.support.mqtt_proxy import MqttProxy
from tests.support.store import inprocess_store


@dataclass
class Rig:
    broker: Mosquitto
    mqtt: MqttProxy
    store: EmbeddedStore
    faults: FaultProxy


@pytest.fixture
async def rig(mosquitto: Mosquitto) -> AsyncIterator[Rig]:
    async with (
        inprocess_store() as store,
        FaultProxy(store.url) as faults,
        MqttProxy(mosquitto.host, mosquitto.port) as mqtt,
    ):
        yield Rig(mosquitto, mqtt, store, faults)
        assert mqtt.errors == [], "the MQTT proxy misread the traffic"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not RESULTS:
        return
    terminalreporter.section("delivery under faults")
    terminalreporter.write_line(
        "| scenario | messages | acknowledged | stored | dead letters | duplicates |"
    )
    terminalreporter.write_line("|---|---:|---:|---:|---:|---:|")
    for ledger in RESULTS:
        terminalreporter.write_line(ledger.row())
