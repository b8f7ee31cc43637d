"""hstream-bridge: MQTT to HStreamDB with at-least-once delivery."""

__version__ = "0.1.0"
