"""Settings validation, broker URLs and the reconnect backoff."""

import ssl

import pytest

from bridge.mqtt import BrokerAddress, MqttSettings, backoff_delay, parse_broker_url


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("mqtt://broker", BrokerAddress("broker", 1883, False)),
        ("mqtts://broker", BrokerAddress("broker", 8883, True)),
        ("mqtt://127.0.0.1:1884/", BrokerAddress("127.0.0.1", 1884, False)),
        ("mqtts://[::1]:8884", BrokerAddress("::1", 8884, True)),
    ],
)
def test_broker_url_gives_host_port_and_tls(url: str, address: BrokerAddress) -> None:
    assert parse_broker_url(url) == address


@pytest.mark.parametrize(
    "url", ["tcp://h:1883", "mqtt://", "mqtt://h:0", "mqtt://h:x", "mqtt://u:p@h", "mqtt://h/t"]
)
def test_bad_broker_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="MQTT URL"):
        parse_broker_url(url)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"protocol": 3}, r"^protocol must be 5 or 4 \(MQTT 3\.1\.1\)$"),
        ({"client_id": ""}, r"^a persistent session needs a client id$"),
        ({"keepalive": 0}, r"^keepalive must be in \(0, 65535\] seconds$"),
        ({"keepalive": 65536}, r"^keepalive must be in \(0, 65535\] seconds$"),
        ({"session_expiry": -1}, r"^session_expiry must be in \[0, 2\*\*32 - 1\] seconds$"),
        ({"session_expiry": 2.0**32}, r"^session_expiry must be in \[0, 2\*\*32 - 1\] seconds$"),
        ({"receive_maximum": 0}, r"^receive_maximum must be in \[1, 65535\]$"),
        ({"receive_maximum": 65536}, r"^receive_maximum must be in \[1, 65535\]$"),
        ({"shared_group": "a/b"}, r"^shared_group must be non-empty without '/', '\+' or '#'$"),
        ({"shared_group": ""}, r"^shared_group must be non-empty without '/', '\+' or '#'$"),
        (
            {"reconnect_min": 2.0, "reconnect_max": 1.0},
            r"^need 0 < reconnect_min <= reconnect_max$",
        ),
        ({"reconnect_min": 0.0}, r"^need 0 < reconnect_min <= reconnect_max$"),
        ({"cert_file": "c.pem"}, r"^cert_file and key_file go together$"),
        ({"key_file": "k.pem"}, r"^cert_file and key_file go together$"),
        ({"url": "tcp://h:1883"}, r"^MQTT URL 'tcp://h:1883' must start with mqtt:// or mqtts://$"),
    ],
)
def test_invalid_settings_are_refused_naming_the_field(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        MqttSettings(**changes)  # type: ignore[arg-type]


def test_plain_url_has_no_tls_context_and_mqtts_verifies_by_default() -> None:
    assert MqttSettings(url="mqtt://h").ssl_context() is None
    context = MqttSettings(url="mqtts://h").ssl_context()
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    insecure = MqttSettings(url="mqtts://h", tls_insecure=True).ssl_context()
    assert insecure is not None
    assert insecure.verify_mode == ssl.CERT_NONE


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    for attempt, ceiling in [(0, 0.1), (1, 0.2), (3, 0.8), (10, 5.0), (1000, 5.0)]:
        delays = [backoff_delay(attempt, 0.1, 5.0) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1
