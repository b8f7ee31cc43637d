"""Settings: flags over environment over the TOML file, and clear errors for bad values."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from bridge.cli import build_parser
from bridge.settings import ConfigFileError, Settings, load_settings

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_flag_beats_env_beats_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text('client_id = "file"\nlinger = 0.5\nmqtt-url = "mqtt://file:1883"\n')
    monkeypatch.setenv("HSTREAM_BRIDGE_CLIENT_ID", "env")
    monkeypatch.setenv("HSTREAM_BRIDGE_LINGER", "0.25")
    args = build_parser().parse_args(["run", "--config", str(config), "--client-id", "flag"])
    flags = {name: getattr(args, name) for name in Settings.model_fields if hasattr(args, name)}
    settings = load_settings(flags, args.config)
    assert settings.client_id == "flag"
    assert settings.linger == 0.25
    assert settings.mqtt_url == "mqtt://file:1883"


def test_rules_come_from_toml_tables(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text('[[rules]]\nid = "t"\ntopic = "a/{x}"\nstream = "s_${x}"\nqos = 1\n')
    settings = load_settings({}, config)
    assert settings.rules == [{"id": "t", "topic": "a/{x}", "stream": "s_${x}", "qos": 1}]


def test_boolean_flags_have_a_negative_form() -> None:
    args = build_parser().parse_args(["run", "--no-auto-create-streams", "--log-json"])
    assert args.auto_create_streams is False
    assert args.log_json is True


def test_invalid_values_name_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="dead_letter_stream"):
        load_settings({"dead_letter_stream": "9 bad"})
    with pytest.raises(ValidationError, match="buffer_bytes"):
        load_settings({"buffer_bytes": "2048", "batch_max_bytes": "4096"})
    config = tmp_path / "bad.toml"
    config.write_text("unknown_key = 1\n")
    with pytest.raises(ValidationError, match="unknown_key"):
        load_settings({}, config)


def test_unreadable_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigFileError, match="cannot read config file"):
        load_settings({}, tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("client_id = \n")
    with pytest.raises(ConfigFileError, match=r"broken\.toml"):
        load_settings({}, broken)


def test_readme_documents_every_flag() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    missing = [
        "--" + name.replace("_", "-")
        for name in Settings.model_fields
        if name not in ("rules", "sources") and f"`--{name.replace('_', '-')}`" not in readme
    ]
    assert not missing, f"README lacks {missing}; regenerate with scripts/settings_table.py"


def test_a_batch_larger_than_the_record_limit_is_refused_naming_both() -> None:
    import pydantic

    with pytest.raises(
        pydantic.ValidationError, match=r"batch_max_bytes \(524288\) is over max_rec"
    ):
        Settings.model_validate({"max_record_bytes": 256 * 1024})
    assert Settings.model_validate({"max_record_bytes": 1 << 19}).max_record_bytes == 1 << 19


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("mqtt_url", "tcp://emqx:1883", "must start with mqtt:// or mqtts://"),
        ("mqtt_url", "mqtt://:1883", "names no host"),
        ("mqtt_url", "mqtt://emqx:0", "has a bad port"),
        ("hstream_url", "hstreem://h:6570", "must start with hstream:// or hstreams://"),
        ("hstream_url", "hstream://h:x", "bad port"),
        ("api_listen", "localhost", "is not host:port"),
        ("api_listen", "127.0.0.1:70000", "out of range"),
        ("store_listen", "127.0.0.1:port", "is not HOST:PORT"),
        ("mqtt_shared_group", "a/b", "without '/', '+' or '#'"),
        ("mqtt_keepalive", 70000, "less than or equal to 65535"),
    ],
)
def test_urls_and_addresses_are_checked_with_the_settings(
    field: str, value: object, problem: str
) -> None:
    """Checked when the settings are read, before the bridge starts anything."""
    with pytest.raises(ValidationError) as raised:
        Settings.model_validate({field: value})
    (error,) = raised.value.errors()
    assert error["loc"] == (field,)
    assert problem in error["msg"]


@pytest.mark.parametrize("side", ["mqtt", "hstream"])
def test_a_client_certificate_needs_its_key(side: str) -> None:
    with pytest.raises(ValidationError, match=f"{side}_cert_file and {side}_key_file go together"):
        Settings.model_validate({f"{side}_cert_file": "c.pem"})
    Settings.model_validate({f"{side}_cert_file": "c.pem", f"{side}_key_file": "k.pem"})


def validation_error(**values: object) -> ValidationError:
    with pytest.raises(ValidationError) as raised:
        Settings.model_validate(values)
    return raised.value


def test_errors_name_the_flag_the_variable_and_the_toml_key() -> None:
    from bridge.cli import _format_validation

    assert _format_validation(validation_error(buffer_bytes="lots")) == (
        "hstream-bridge: invalid setting --buffer-bytes (HSTREAM_BRIDGE_BUFFER_BYTES, "
        "buffer_bytes): Input should be a valid integer, unable to parse string as an integer "
        "(got 'lots')"
    )
    # A check across settings names each one by its flag.
    assert _format_validation(validation_error(buffer_bytes=2048, batch_max_bytes=4096)) == (
        "hstream-bridge: invalid settings: --buffer-bytes must hold at least one batch "
        "(--batch-max-bytes)"
    )
    several = _format_validation(validation_error(mqtt_url="x", linger=-1, unknown_key=1))
    assert several.splitlines() == [
        "hstream-bridge: invalid settings:",
        "  --mqtt-url (HSTREAM_BRIDGE_MQTT_URL, mqtt_url): MQTT URL 'x' must start with mqtt://"
        " or mqtts://",
        "  --linger (HSTREAM_BRIDGE_LINGER, linger): Input should be greater than or equal to 0"
        " (got -1)",
        "  unknown_key in the config file: not a setting",
    ]


def test_secrets_are_not_quoted_in_errors() -> None:
    from bridge.cli import _format_validation

    text = _format_validation(validation_error(api_token=123456789, mqtt_password=987654321))
    assert "--api-token" in text
    assert "--mqtt-password" in text
    assert "123456789" not in text
    assert "987654321" not in text


def test_a_previous_cluster_secret_needs_the_new_one_and_sixteen_characters() -> None:
    with pytest.raises(ValidationError, match="cluster_secret_previous needs cluster_secret"):
        Settings.model_validate({"cluster_secret_previous": "the old cluster secret"})
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings.model_validate(
            {"cluster_secret": "the new cluster secret", "cluster_secret_previous": "short"}
        )
    settings = Settings.model_validate(
        {
            "cluster_secret": "the new cluster secret",
            "cluster_secret_previous": "the old cluster secret",
        }
    )
    assert settings.cluster_secret_previous == "the old cluster secret"
