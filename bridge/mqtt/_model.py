"""Value types of the MQTT source: the message handed to the pipeline and the settings."""

import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol, TypeVar

_T = TypeVar("_T")


class Message(NamedTuple):
    """One PUBLISH as received. `received_at` is `time.monotonic()` when it was parsed.

    A NamedTuple rather than a frozen dataclass: one is made per message, and a frozen
    dataclass costs several times more to build.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    user_properties: tuple[tuple[str, str], ...]
    received_at: float


class Settling(Protocol):
    """What a handler may return instead of an awaitable: `then(callback, arg)` calls
    `callback(arg)`, once, when the message may be acknowledged. Cheaper than a future per
    message, and than a closure: the callback is the connection's, the arg its ticket."""

    def then(self, callback: Callable[[_T], None], arg: _T) -> None: ...


Handler = Callable[[Message], Awaitable[None] | Settling | None]
"""Called once per message, synchronously, in socket order. Returning an awaitable (or a
`Settling`) holds the PUBACK (QoS 1) / PUBREC (QoS 2) until it completes; returning None
acknowledges at once."""


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool


def parse_broker_url(url: str) -> BrokerAddress:
    """`mqtt://host[:1883]` or `mqtts://host[:8883]`; IPv6 hosts in brackets."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"MQTT URL {url!r} must start with mqtt:// or mqtts://")
    tls = scheme == "mqtts"
    rest = rest.rstrip("/")
    if "/" in rest or "@" in rest:
        raise ValueError(f"MQTT URL {url!r}: only host and port are allowed (credentials apart)")
    if rest.startswith("["):
        host, _, after = rest[1:].partition("]")
        port_text = after.removeprefix(":")
    else:
        host, _, port_text = rest.partition(":")
    if not host:
        raise ValueError(f"MQTT URL {url!r} names no host")
    if not port_text:
        return BrokerAddress(host, 8883 if tls else 1883, tls)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"MQTT URL {url!r} has a bad port")
    return BrokerAddress(host, int(port_text), tls)


@dataclass(frozen=True)
class MqttSettings:
    """How to reach the broker and which session to resume. Times in seconds."""

    url: str = "mqtt://127.0.0.1:1883"
    client_id: str = "hstream-bridge"
    username: str | None = None
    password: str | None = None
    protocol: int = 5  # 5, or 4 meaning MQTT 3.1.1
    keepalive: float = 30.0
    session_expiry: float = 7200.0  # MQTT 5 only; 3.1.1 brokers apply their own expiry
    receive_maximum: int = 1000  # MQTT 5 only
    shared_group: str | None = None  # subscribe as $share/<group>/<filter>
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False  # skip certificate and host name checks (testing only)
    reconnect_min: float = 0.1
    reconnect_max: float = 30.0
    connect_timeout: float = 10.0  # TCP + TLS + CONNACK, and each SUBACK/UNSUBACK

    def __post_init__(self) -> None:
        parse_broker_url(self.url)
        if self.protocol not in (4, 5):
            raise ValueError("protocol must be 5 or 4 (MQTT 3.1.1)")
        if not self.client_id:
            raise ValueError("a persistent session needs a client id")
        if not 0 < self.keepalive <= 65535:
            raise ValueError("keepalive must be in (0, 65535] seconds")
        if not 0 <= self.session_expiry <= 0xFFFFFFFF:
            raise ValueError("session_expiry must be in [0, 2**32 - 1] seconds")
        if not 1 <= self.receive_maximum <= 65535:
            raise ValueError("receive_maximum must be in [1, 65535]")
        if self.shared_group is not None and (
            not self.shared_group or any(c in self.shared_group for c in "/+#")
        ):
            raise ValueError("shared_group must be non-empty without '/', '+' or '#'")
        if not 0 < self.reconnect_min <= self.reconnect_max:
            raise ValueError("need 0 < reconnect_min <= reconnect_max")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")

    @property
    def address(self) -> BrokerAddress:
        return parse_broker_url(self.url)

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for mqtts:// (None for mqtt://), from the CA/cert/key files."""
        if not self.address.tls:
            return None
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        if self.tls_insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context
