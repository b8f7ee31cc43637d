"""The Grafana dashboard, Prometheus config and Dockerfile agree with what the bridge exports."""

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from bridge.cdc.metrics import CdcCollector
from bridge.metrics import BridgeMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "hstream-bridge.json"
DATASOURCES = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
METRIC_NAME = re.compile(r"\bhstream_bridge_[a-zA-Z0-9_]+")

# The series names each metric type puts on the wire.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


class DiskBuffer:
    """Stands in for the disk buffer, whose families exist only once one is bound."""

    bytes_on_disk = backlog_records = backlog_bytes = 0
    forwarded_total = fsyncs_total = written_total = 0
    limit_bytes = 1 << 30
    accepting = True

    def oldest_age(self) -> float | None:
        return None


def exported_series() -> dict[str, str]:
    """Series name -> family name, from a scrape of a fresh BridgeMetrics with a disk buffer."""
    metrics = BridgeMetrics()
    metrics.bind_disk_buffer(DiskBuffer())
    metrics.registry.register(CdcCollector(dict))  # the families exist with no source too
    body, _ = metrics.render()
    series: dict[str, str] = {}
    for family in text_string_to_metric_families(body.decode()):
        for suffix in SUFFIXES[family.type]:
            series[family.name + suffix] = family.name
    return series


def panels(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in node.get("panels", []):
        yield panel
        yield from panels(panel)  # rows nest their panels


def expressions(dashboard: dict[str, Any]) -> Iterator[str]:
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        yield query.get("query", "") if isinstance(query, dict) else str(query or "")


def load_dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_every_dashboard_expression_uses_only_exported_families() -> None:
    series = exported_series()
    used = {name for expr in expressions(load_dashboard()) for name in METRIC_NAME.findall(expr)}
    assert used, "the dashboard queries no hstream_bridge metric"
    unknown = sorted(used - series.keys())
    assert not unknown, f"not exported by BridgeMetrics: {unknown}"


def test_dashboard_shows_the_metrics_an_operator_needs() -> None:
    series = exported_series()
    used = {
        series[name]
        for expr in expressions(load_dashboard())
        for name in METRIC_NAME.findall(expr)
        if name in series
    }
    needed = {
        "hstream_bridge_messages_received",
        "hstream_bridge_messages_matched",
        "hstream_bridge_records_success",
        "hstream_bridge_end_to_end_latency_seconds",
        "hstream_bridge_append_duration_seconds",
        "hstream_bridge_queuing_bytes",
        "hstream_bridge_buffer_budget_bytes",
        "hstream_bridge_records_dropped",
        "hstream_bridge_records_dead_lettered",
        "hstream_bridge_hstream_errors",
        "hstream_bridge_mqtt_connected",
        "hstream_bridge_mqtt_reconnects",
        "hstream_bridge_inflight_appends",
        "hstream_bridge_batch_records",
    }
    assert needed <= used, sorted(needed - used)


def test_dashboard_shows_every_disk_buffer_family() -> None:
    series = exported_series()
    families = {name for name in series.values() if name.startswith("hstream_bridge_disk_buffer_")}
    assert len(families) == 9
    used = {
        series[name]
        for expr in expressions(load_dashboard())
        for name in METRIC_NAME.findall(expr)
        if name in series
    }
    assert families <= used, sorted(families - used)


def test_panels_do_not_overlap() -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in load_dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, (panel["title"], taken[x, y])
                taken[x, y] = panel["title"]


def test_every_panel_has_a_description_and_a_unique_id() -> None:
    found = list(panels(load_dashboard()))
    assert found
    for panel in found:
        assert panel.get("description", "").strip(), panel["title"]
    ids = [panel["id"] for panel in found]
    assert len(ids) == len(set(ids))


def test_latency_panels_use_histogram_quantile_over_buckets() -> None:
    exprs = list(expressions(load_dashboard()))
    for family in ("end_to_end_latency_seconds", "append_duration_seconds"):
        assert any(
            "histogram_quantile(" in e and f"hstream_bridge_{family}_bucket" in e for e in exprs
        ), family


def test_dashboard_datasource_is_the_provisioned_one() -> None:
    provisioned = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    uids = {source["uid"] for source in provisioned if source["type"] == "prometheus"}
    for panel in panels(load_dashboard()):
        assert panel["datasource"]["uid"] in uids, panel["title"]


def test_prometheus_scrapes_bridge_emqx_and_hstreamdb() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    bridge = jobs["hstream-bridge"]
    assert bridge["static_configs"][0]["targets"] == ["bridge:8080"]
    assert bridge.get("metrics_path", "/metrics") == "/metrics"
    assert jobs["emqx"]["metrics_path"] == "/api/v5/prometheus/stats"
    assert jobs["emqx"]["static_configs"][0]["targets"] == ["emqx:18083"]
    assert jobs["hstreamdb"]["static_configs"][0]["targets"] == ["hstream-exporter:9200"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    result = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def test_dockerfile_runs_as_non_root_with_a_health_check() -> None:
    instructions = dockerfile_instructions()
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users, "no USER instruction"
    assert users[-1].split(":")[0] not in {"root", "0"}
    [health] = [rest for keyword, rest in instructions if keyword == "HEALTHCHECK"]
    assert "/health" in health
    assert "curl" not in health  # the slim image has none
    assert ("FROM", "python:3.11-slim") in instructions
    assert ("EXPOSE", "8080") in instructions
    assert ("ENTRYPOINT", '["hstream-bridge"]') in instructions
    [cmd] = [json.loads(rest) for keyword, rest in instructions if keyword == "CMD"]
    assert cmd == ["run", "--api-listen", "0.0.0.0:8080", "--data-dir", "/data"]
    assert any(keyword == "VOLUME" and "/data" in rest for keyword, rest in instructions)


def test_dashboard_shows_every_cdc_family() -> None:
    series = exported_series()
    families = {name for name in series.values() if name.startswith("hstream_bridge_cdc_")}
    assert len(families) == 7
    used = {
        series[name]
        for expr in expressions(load_dashboard())
        for name in METRIC_NAME.findall(expr)
        if name in series
    }
    assert families <= used, sorted(families - used)
