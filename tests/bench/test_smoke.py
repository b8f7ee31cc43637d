"""The benchmark harnesses still run end to end (tiny sizes; no timing is asserted here).

BENCHMARKS.md is only as good as the commands that reproduce it: these runs keep them working.
"""

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_pipeline_benchmark_stores_every_message_in_each_cell(tmp_path: Path) -> None:
    output = tmp_path / "pipeline.md"
    result = run(
        "bench.pipeline",
        "--messages", "2000",
        "--cells", "bridge,bridge-disk,reference,latency,latency-disk",
        "--latency-seconds", "1",
        "--cell-timeout", "120",
        "--output", str(output),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = output.read_text()
    bridge_row = next(line for line in table.splitlines() if line.startswith("| bridge, payload"))
    assert "2,000/2,000" in bridge_row
    assert "| reference" in table
    assert "paced at" in table
    rows = table.splitlines()
    disk_row = next(
        line for line in rows if line.startswith("| bridge, payload raw, --buffer disk |")
    )
    assert "2,000/2,000" in disk_row
    assert "fsyncs" in disk_row  # the disk buffer's counters were scraped
    assert any(line.startswith("| bridge, payload raw, --buffer disk, paced at") for line in rows)
    assert "bridge-disk / bridge msg/s" in table
    assert "p99 publish-to-stored at half peak: memory" in table


def test_append_benchmark_runs_ours_and_the_official_client(tmp_path: Path) -> None:
    result = run(
        "bench.append",
        "--seconds", "0.3",
        "--batches", "100",
        "--compressions", "none",
        "--rows", "encoded,official",
        "--out", str(tmp_path / "append.md"),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "ours append_encoded" in result.stdout
    assert "official append" in result.stdout


def test_pipeline_benchmark_c_clients_telemetry_and_fan_out(tmp_path: Path) -> None:
    """The C subscriber ceiling, C publishers, the telemetry payload and the fan-out cell."""
    output = tmp_path / "pipeline.md"
    result = run(
        "bench.pipeline",
        "--messages", "2000",
        "--payload", "telemetry",
        "--publishers-client", "c",
        "--cells", "ceiling-c,bridge,bridge-json,bridge@gmqtt,fanout",
        "--cell-timeout", "120",
        "--output", str(output),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = output.read_text()
    rows: dict[str, str] = {}  # the main table's row of each cell (the CPU table comes later)
    for line in text.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0], line)
    for cell in (
        "| ceiling: mosquitto_sub -q 1 -C N count-only (C)",
        "| bridge, payload raw",  # C publishers: every message they sent was stored
        "| bridge, payload json",
        "| bridge, payload raw (gmqtt publishers)",
        "| fan-out: bridge, payload raw, 10,000 topics -> 100 streams x 4 shards",
    ):
        assert "2,000/2,000" in rows[cell], rows[cell]
    assert (
        "100 streams of 4 shards"
        in rows["| fan-out: bridge, payload raw, 10,000 topics -> 100 streams x 4 shards"]
    )
    assert "(mosquitto_pub " in text  # the C publishers' CPU is reported
    assert "- bridge / ceiling (C subscriber) msg/s: raw" in text
    assert "- json / raw msg/s:" in text
    assert "- json / raw CPU per message:" in text
    assert "- fanout / bridge raw (one stream, gmqtt publishers) msg/s:" in text
    assert "- fanout memory: peak RSS" in text
    assert "- JSON encoder: " in text


def test_pipeline_benchmark_rounds_report_each_round_and_the_median(tmp_path: Path) -> None:
    output = tmp_path / "pipeline.md"
    result = run(
        "bench.pipeline",
        "--messages", "1000",
        "--payload", "telemetry",
        "--cells", "bridge,bridge-json",
        "--rounds", "2",
        "--cell-timeout", "120",
        "--output", str(output),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = output.read_text()
    assert text.startswith("## Ratios over 2 rounds")
    summary = next(line for line in text.splitlines() if line.startswith("| json / raw, msg/s |"))
    cells = [cell.strip() for cell in summary.strip("|").split("|")]
    round_1, round_2, median = (float(cell.strip("*")) for cell in cells[1:4])
    assert abs(median - (round_1 + round_2) / 2) < 0.006  # two rounds: their mean
    assert text.count("1,000/1,000") == 4  # both cells stored everything, in both rounds
    assert "## Round 1" in text
    assert "## Round 2" in text


def test_append_call_benchmark_reports_client_and_store_cpu_per_call() -> None:
    result = run("bench.append_call", "--calls", "32", "--records", "5", timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| grpc.aio |")]
    assert len(rows) == 2  # 1 and 16 in flight
    for row in rows:
        calls_per_s, client_us, store_us = (
            float(cell.replace(",", "")) for cell in row.strip("|").split("|")[2:5]
        )
        assert min(calls_per_s, client_us) > 0, row
        assert store_us >= 0, row  # the store's CPU is read in 10 ms ticks: 32 calls may be 0
