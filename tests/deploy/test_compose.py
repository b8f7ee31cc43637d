"""docker-compose.yml is valid and wires the bridge to EMQX and HStreamDB with what it needs.

Validated by `docker-compose config` (scripts/bootstrap.sh --test installs docker-compose); a
missing binary fails the test rather than skipping it, so a broken file cannot pass unnoticed.
"""

import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus.yml"
HSTREAM_SERVICES = {"zookeeper", "hstore", "hserver"}
TOKEN = "compose-test-token"


def compose_config(token: str | None) -> "subprocess.CompletedProcess[str]":
    """`docker-compose config` with HSTREAM_BRIDGE_API_TOKEN set to `token` (None: unset)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed: run scripts/bootstrap.sh --test")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env.pop("HSTREAM_BRIDGE_API_TOKEN", None)
    if token is not None:
        env["HSTREAM_BRIDGE_API_TOKEN"] = token
    return subprocess.run(
        [binary, "--project-directory", str(ROOT), "-f", str(COMPOSE), "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@functools.cache
def resolved() -> dict[str, Any]:
    """The compose model as docker-compose resolves it (env files, variables, defaults)."""
    done = compose_config(TOKEN)
    assert done.returncode == 0, done.stderr
    model: dict[str, Any] = yaml.safe_load(done.stdout)
    return model


def seconds(duration: str | int | float) -> float:
    """A compose duration (`5s`, `10m`, `1m30s`, `1h`, `500ms`) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def service(name: str) -> dict[str, Any]:
    found: dict[str, Any] = resolved()["services"][name]
    return found


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_compose_file_is_valid_for_docker_compose() -> None:
    services = set(resolved()["services"])
    assert {"emqx", "bridge", "prometheus", "grafana"} | HSTREAM_SERVICES <= services


def test_bridge_command_points_at_the_emqx_and_hserver_services() -> None:
    bridge = service("bridge")
    command = bridge["command"]
    assert command[0] == "run"
    assert flag(command, "--mqtt-url") == "mqtt://emqx:1883"
    assert flag(command, "--hstream-url") == "hstream://hserver:6570"
    assert flag(command, "--api-listen") == "0.0.0.0:8080"
    assert flag(command, "--data-dir") == "/data"
    assert bridge["build"]["dockerfile"] == "deploy/Dockerfile"


def test_bridge_has_an_api_token_because_it_listens_beyond_loopback() -> None:
    assert service("bridge")["environment"]["HSTREAM_BRIDGE_API_TOKEN"] == TOKEN


def test_without_an_api_token_compose_refuses_instead_of_using_a_default() -> None:
    done = compose_config(None)
    assert done.returncode != 0
    assert "set HSTREAM_BRIDGE_API_TOKEN" in done.stderr
    assert "change-me" not in COMPOSE.read_text()


def test_prometheus_sends_the_api_token_the_bridge_requires() -> None:
    job = next(
        job
        for job in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]
        if job["job_name"] == "hstream-bridge"
    )
    authorization = job["authorization"]
    assert authorization.get("type", "Bearer") == "Bearer"
    token_file = authorization["credentials_file"]
    prometheus = service("prometheus")
    # The same token as the bridge's, written where the scrape config reads it...
    assert prometheus["environment"]["HSTREAM_BRIDGE_API_TOKEN"] == TOKEN
    script = "\n".join(prometheus["entrypoint"]).replace("$$", "$")
    assert f'"$HSTREAM_BRIDGE_API_TOKEN" > {token_file}' in script
    assert 'exec /bin/prometheus "$@"' in script
    # ...on a tmpfs (memory only), and Prometheus still gets its config file.
    tmpfs = prometheus["tmpfs"]
    assert str(Path(token_file).parent) in (tmpfs if isinstance(tmpfs, list) else [tmpfs])
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert "--storage.tsdb.path=/prometheus" in prometheus["command"]


def test_hserver_healthcheck_outlasts_its_wait_for_storage() -> None:
    hserver = service("hserver")
    command = " ".join(hserver["command"])
    match = re.search(r"wait-for-storage\.sh\s+\S+\s+\d+\s+\S+\s+\d+\s+(\d+)\s", command)
    assert match, command
    wait = float(match.group(1))
    check = hserver["healthcheck"]
    window = seconds(check.get("start_period", 0)) + seconds(check["interval"]) * check["retries"]
    # Docker calls it unhealthy only after the window; hserver itself starts after the wait.
    assert window > wait + 60, (window, wait)


def test_hstream_exporter_is_pinned_not_latest() -> None:
    image = service("hstream-exporter")["image"]
    name, _, tag = image.rpartition(":")
    assert name == "hstreamdb/hstream-exporter"
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), image
    assert re.fullmatch(r"hstreamdb/hstream:v\d+\.\d+\.\d+", service("hserver")["image"])


def test_emqx_does_not_resend_held_messages_over_a_live_connection() -> None:
    # Any retry interval re-sends (DUP) what the bridge holds on purpose during an outage.
    # `infinity` is EMQX's default since 5.8; older 5.x accept no `infinity` at all.
    emqx = service("emqx")
    major, minor = (int(part) for part in emqx["image"].rpartition(":")[2].split(".")[:2])
    retry = emqx["environment"].get("EMQX_MQTT__RETRY_INTERVAL")
    assert (major, minor) >= (5, 8), emqx["image"]
    assert retry in (None, "infinity"), retry
