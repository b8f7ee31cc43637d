"""The example configuration that docker-compose mounts is valid, rules included."""

from pathlib import Path

from bridge.settings import load_settings
from rules import Matcher, parse_rules

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "bridge.toml"


def test_example_config_loads_and_its_rules_route() -> None:
    settings = load_settings({}, EXAMPLE)
    rules = parse_rules(settings.rules, str(EXAMPLE))
    assert [rule.id for rule in rules] == ["telemetry", "frames"]
    (route,) = Matcher(rules).route("fleet/berlin/dev-7/telemetry")
    assert (route.stream, route.key) == ("telemetry_berlin", "dev-7")
    assert settings.compression == "zstd"
