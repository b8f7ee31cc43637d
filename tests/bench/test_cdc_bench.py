"""bench/cdc.py still runs end to end: both databases, a tiny row count (no timing asserted).

Keeps the command behind BENCHMARKS.md section 6 working. Needs the PostgreSQL and MariaDB
server binaries (as the CDC tests do) and Mosquitto.
"""

import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
ROWS = 2000


def test_cdc_benchmark_stores_every_row_of_both_databases(tmp_path: Path) -> None:
    output = tmp_path / "cdc.md"
    started = time.monotonic()
    result = subprocess.run(
        [
            sys.executable, "-m", "bench.cdc", "--quick", "--rows", str(ROWS),
            "--cells", "postgres,mysql", "--cell-timeout", "40", "--stall-seconds", "10",
            "--output", str(output),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = output.read_text()
    assert text.startswith("# CDC"), text
    assert ".venv/bin/python -m bench.cdc --quick" in text  # the command to reproduce
    rows: dict[str, list[str]] = {}  # the main table's row of each cell (the CPU table follows)
    for line in text.splitlines():
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0], line.split(" | "))
    for cell in ("postgres", "mysql"):
        row = rows[f"| {cell}"]
        rate = float(row[1].replace(",", ""))
        assert rate > 0, row
        assert f"{ROWS:,}/{ROWS:,}" in row[10], row
    assert elapsed < 60, f"the smoke run took {elapsed:.1f} s"
