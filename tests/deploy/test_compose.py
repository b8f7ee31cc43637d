"""docker-compose.yml is valid and wires the bridge to EMQX and HStreamDB with what it needs.

Validated by `docker-compose config` (scripts/bootstrap.sh --test installs docker-compose); a
missing binary fails the test rather than skipping it, so a broken file cannot pass unnoticed.
"""

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
HSTREAM_SERVICES = {"zookeeper", "hstore", "hserver"}


@functools.cache
def resolved() -> dict[str, Any]:
    """The compose model as docker-compose resolves it (env files, variables, defaults)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is not installed: run scripts/bootstrap.sh --test")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env.pop("HSTREAM_BRIDGE_API_TOKEN", None)  # prove the file works without it set
    done = subprocess.run(
        [binary, "--project-directory", str(ROOT), "-f", str(COMPOSE), "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    model: dict[str, Any] = yaml.safe_load(done.stdout)
    return model


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
    token = service("bridge")["environment"]["HSTREAM_BRIDGE_API_TOKEN"]
    assert token


def test_bridge_waits_for_healthy_emqx_and_hserver() -> None:
    depends = service("bridge")["depends_on"]
    assert depends["emqx"]["condition"] == "service_healthy"
    assert depends["hserver"]["condition"] == "service_healthy"
    assert service("emqx")["healthcheck"]["test"]
    assert service("hserver")["healthcheck"]["test"]


def test_emqx_inflight_and_queue_are_raised_for_held_pubacks() -> None:
    env = service("emqx")["environment"]
    inflight = int(env["EMQX_MQTT__MAX_INFLIGHT"])
    assert inflight > 32  # EMQX default
    assert int(env["EMQX_MQTT__MAX_MQUEUE_LEN"]) > 1000  # EMQX default, drops the oldest
    assert env["EMQX_MQTT__SHARED_SUBSCRIPTION_STRATEGY"] in {"hash_clientid", "hash_topic"}
    assert "EMQX_MQTT__SESSION_EXPIRY_INTERVAL" in env
    # The bridge asks for the same window (EMQX grants the smaller of the two).
    bridge_env = service("bridge")["environment"]
    assert int(bridge_env["HSTREAM_BRIDGE_MQTT_RECEIVE_MAXIMUM"]) == inflight


def test_hstreamdb_runs_as_in_its_quick_start() -> None:
    for name in HSTREAM_SERVICES - {"zookeeper"}:
        assert service(name)["image"].startswith("hstreamdb/hstream:")
    hserver = " ".join(service("hserver")["command"])
    assert "--metastore-uri zk://zookeeper:2181" in hserver
    assert "--port 6570" in hserver
    assert "--store-admin-host hstore" in hserver


def test_prometheus_and_grafana_mount_the_deploy_files() -> None:
    prometheus = " ".join(str(v) for v in service("prometheus")["volumes"])
    assert str(ROOT / "deploy" / "prometheus.yml") in prometheus
    grafana = " ".join(str(v) for v in service("grafana")["volumes"])
    assert str(ROOT / "deploy" / "grafana" / "provisioning") in grafana
    assert str(ROOT / "deploy" / "grafana" / "dashboards") in grafana


def test_published_ports_bind_to_loopback_only() -> None:
    for name, spec in resolved()["services"].items():
        for port in spec.get("ports", []):
            text = port if isinstance(port, str) else port.get("host_ip", "")
            assert str(text).startswith("127.0.0.1"), (name, port)
