"""Errors raised by the MQTT source.

MqttError
+-- ConnectRefused      the broker answered CONNACK with a failure code (`.code`, `.permanent`)
+-- SubscribeRefused    SUBACK refused some filters (`.refused`: filter -> reason code)
"""


class MqttError(Exception):
    """Root of the errors this package raises."""


class ConnectRefused(MqttError):
    """The broker refused the connection; `permanent` when retrying cannot help (auth, bad id)."""

    def __init__(self, code: int, message: str, *, permanent: bool) -> None:
        super().__init__(f"broker refused the connection: code {code:#x} ({message})")
        self.code = code
        self.permanent = permanent


class SubscribeRefused(MqttError):
    """The broker refused some subscriptions; they stay wanted and are sent again with backoff."""

    def __init__(self, refused: dict[str, int]) -> None:
        listed = ", ".join(f"{f!r} ({code:#x})" for f, code in sorted(refused.items()))
        super().__init__(f"broker refused subscriptions: {listed}")
        self.refused = refused
