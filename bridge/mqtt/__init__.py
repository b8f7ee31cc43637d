"""The MQTT side of the bridge: one persistent session whose acks wait for the pipeline.

`MqttSource` (in `_source.py`) owns the session: reconnects, subscriptions, pause/resume and the
delivery contract. `_link.py` is the one place that touches gmqtt's internals.
"""

from bridge.backoff import backoff_delay
from bridge.mqtt._errors import ConnectRefused, MqttError, SubscribeRefused
from bridge.mqtt._model import (
    BrokerAddress,
    Handler,
    Message,
    MqttSettings,
    Settling,
    parse_broker_url,
)
from bridge.mqtt._source import MqttSource

__all__ = [
    "BrokerAddress",
    "ConnectRefused",
    "Handler",
    "Message",
    "MqttError",
    "MqttSettings",
    "MqttSource",
    "Settling",
    "SubscribeRefused",
    "backoff_delay",
    "parse_broker_url",
]
