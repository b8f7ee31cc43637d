"""bench/json_encode.py runs and prints one row per way, each checked against protobuf."""

import subprocess
import sys

from tests.support.store import REPO_ROOT


def test_json_encode_benchmark_prints_its_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench.json_encode", "--number", "200", "--repeat", "1"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| way |")
    assert any(row.startswith("| json_struct_bytes (router now) |") for row in rows)
    assert "reproduce: .venv/bin/python -m bench.json_encode" in result.stdout
