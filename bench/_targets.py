"""The processes under test in the pipeline benchmark: our bridge and the reference bridge.

Each is a subprocess with its output in a log file, a `stored()` count read while it runs
(the bridge's `/metrics`, the reference's `stored N` lines) and a `stop()` that ends it with
SIGTERM (SIGKILL after a bound). Optionally the bridge runs under cProfile or py-spy, and with
`--buffer disk` (its buffer under its own data dir in the cell's directory; `stored()` still
counts records HStreamDB confirmed, i.e. what the forwarder got stored, not what is on disk).
"""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import httpx

from tests.support.store import REPO_ROOT, free_port

STOP_TIMEOUT = 30.0
SUCCESS_METRIC = "hstream_bridge_records_success_total"
PROBLEM_METRICS = (
    "hstream_bridge_records_failed_total",
    "hstream_bridge_records_dropped_total",
    "hstream_bridge_records_dead_lettered_total",
)
DISK_WRITTEN_METRIC = "hstream_bridge_disk_buffer_written_records_total"
DISK_FSYNCS_METRIC = "hstream_bridge_disk_buffer_fsyncs_total"


def rules_toml(payload: str) -> str:
    """The one benchmark rule: every device's data to stream `bench`, keyed by device."""
    return (
        "[[rules]]\n"
        'id = "bench"\n'
        'topic = "bench/{dev}/data"\n'
        'stream = "bench"\n'
        'key = "${dev}"\n'
        f'payload = "{payload}"\n'
        "qos = 1\n"
    )


def fleet_rules_toml(payload: str = "raw") -> str:
    """The fan-out rule: every fleet device to its site's stream (created by the bridge, with
    --stream-shards shards), keyed by device."""
    return (
        "[[rules]]\n"
        'id = "fleet"\n'
        'topic = "fleet/{site}/{device}/telemetry"\n'
        'stream = "fleet_${site}"\n'
        'key = "${device}"\n'
        f'payload = "{payload}"\n'
        "qos = 1\n"
    )


def metric_sum(text: str, name: str) -> float:
    """The sum of every series of `name` in Prometheus text (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


class Target:
    """Common parts: the subprocess, its log, stopping it."""

    name = "target"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.log_path = workdir / f"{self.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def _spawn(self, command: list[str], stdout: int | IO[bytes] | None = None) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log if stdout is None else stdout,
                stderr=log,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            )

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}"
            )

    async def start(self, timeout: float = 60.0) -> None:
        raise NotImplementedError

    async def stored(self) -> int:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Release what the harness holds for this target (after `stop()`)."""

    async def wait_stored(self, count: int, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while (stored := await self.stored()) < count:
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: {stored} of {count} stored after {timeout} s "
                                   f"({what})\n{self.log_tail()}")  # fmt: skip
            await asyncio.sleep(0.05)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT; the exit code."""
        process = self.process
        if process is None or process.poll() is not None:
            return None if process is None else process.returncode
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
            return None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


class BridgeTarget(Target):
    """`python -m bridge run` against the given broker and store, with the benchmark rule."""

    name = "bridge"

    def __init__(
        self,
        workdir: Path,
        *,
        mqtt_url: str,
        hstream_url: str,
        payload: str = "raw",
        extra_args: list[str] | None = None,
        cprofile: Path | None = None,
        buffer: str = "memory",
        rules: str | None = None,
    ) -> None:
        super().__init__(workdir)
        self.buffer = buffer
        self.rules = rules_toml(payload) if rules is None else rules
        self.api_port = free_port()
        self.config = workdir / "rules.toml"
        self.command = [
            "-m", "bridge", "run",
            "--mqtt-url", mqtt_url,
            "--hstream-url", hstream_url,
            "--data-dir", str(workdir / "data"),
            "--api-listen", f"127.0.0.1:{self.api_port}",
            "--client-id", "bench-bridge",
            "--config", str(self.config),
            "--log-level", "warning",
            "--buffer", buffer,
            *(extra_args or []),
        ]  # fmt: skip
        self.payload = payload
        self.cprofile = cprofile
        # (wall time, records buffered or in flight, intake paused) at every stored() poll
        self.samples: list[tuple[float, int, bool]] = []
        self.peak_queued_bytes = 0  # the most it ever buffered (queuing_bytes_peak)
        self.budget_bytes = 0  # --buffer-bytes, as the bridge reports it
        self._http = httpx.AsyncClient(timeout=5.0)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def command_line(self) -> list[str]:
        prefix = [sys.executable]
        if self.cprofile is not None:
            prefix += ["-m", "cProfile", "-o", str(self.cprofile)]
        return prefix + self.command

    async def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self.rules)
        self._spawn(self.command_line())
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            with contextlib.suppress(httpx.HTTPError):
                response = await self._http.get(f"{self.api_url}/ready")
                if response.status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"bridge not ready after {timeout} s:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    async def metrics(self) -> str:
        response = await self._http.get(f"{self.api_url}/metrics")
        response.raise_for_status()
        return response.text

    async def stored(self) -> int:
        text = await self.metrics()
        queued = metric_sum(text, "hstream_bridge_queuing_records")
        paused = metric_sum(text, "hstream_bridge_intake_paused")
        self.samples.append((time.time(), int(queued), paused > 0))
        peak = int(metric_sum(text, "hstream_bridge_queuing_bytes_peak"))
        self.peak_queued_bytes = max(self.peak_queued_bytes, peak)
        self.budget_bytes = int(metric_sum(text, "hstream_bridge_buffer_budget_bytes"))
        return int(metric_sum(text, SUCCESS_METRIC))

    async def problems(self) -> dict[str, float]:
        """Failed, dropped and dead-lettered record counts (all should stay 0)."""
        text = await self.metrics()
        return {name: metric_sum(text, name) for name in PROBLEM_METRICS}

    async def batching(self) -> str:
        """Appends made, mean records per append, mean append and bridge-side e2e times."""
        text = await self.metrics()
        appends = metric_sum(text, "hstream_bridge_batch_records_count")
        records = metric_sum(text, "hstream_bridge_batch_records_sum")
        append_s = metric_sum(text, "hstream_bridge_append_duration_seconds_sum")
        append_n = metric_sum(text, "hstream_bridge_append_duration_seconds_count")
        e2e_s = metric_sum(text, "hstream_bridge_end_to_end_latency_seconds_sum")
        e2e_n = metric_sum(text, "hstream_bridge_end_to_end_latency_seconds_count")
        gc_s = metric_sum(text, "hstream_bridge_gc_seconds_total")
        return (
            f"{appends:.0f} appends of {records / max(appends, 1):.0f} records, "
            f"append {append_s / max(append_n, 1) * 1000:.1f} ms, "
            f"receive-to-stored {e2e_s / max(e2e_n, 1) * 1000:.1f} ms (means); "
            f"cyclic GC {gc_s:.2f} s in all"
        )

    async def disk_counters(self) -> tuple[int, int]:
        """(records written to the disk buffer, its fsyncs) so far; (0, 0) in memory mode."""
        text = await self.metrics()
        return int(metric_sum(text, DISK_WRITTEN_METRIC)), int(metric_sum(text, DISK_FSYNCS_METRIC))

    async def aclose(self) -> None:
        await self._http.aclose()


class ReferenceTarget(Target):
    """`python -m bench.reference_bridge`: paho-mqtt + the official client's BufferedProducer."""

    name = "reference"

    def __init__(
        self,
        workdir: Path,
        *,
        mqtt_port: int,
        hstream_address: str,
        workers: int,
        size_trigger: int,
        time_trigger: float,
    ) -> None:
        super().__init__(workdir)
        self.command = [
            sys.executable, "-m", "bench.reference_bridge",
            "--mqtt-port", str(mqtt_port),
            "--client-id", "bench-reference",
            "--hstream", hstream_address,
            "--stream", "bench",
            "--workers", str(workers),
            "--size-trigger", str(size_trigger),
            "--time-trigger", str(time_trigger),
        ]  # fmt: skip
        self._stored = 0
        self._failed = 0
        self._subscribed = threading.Event()
        self._reader: threading.Thread | None = None

    def _read_progress(self, stream: IO[bytes]) -> None:
        with self.log_path.open("a") as log:
            for raw in stream:
                line = raw.decode(errors="replace").strip()
                if line == "subscribed":
                    self._subscribed.set()
                elif line.startswith("stored "):
                    parts = line.split()
                    self._stored, self._failed = int(parts[1]), int(parts[3])
                    continue
                log.write(line + "\n")
                log.flush()

    async def start(self, timeout: float = 60.0) -> None:
        self._spawn(self.command, stdout=subprocess.PIPE)
        assert self.process is not None
        assert self.process.stdout is not None
        self._reader = threading.Thread(
            target=self._read_progress, args=(self.process.stdout,), daemon=True
        )
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._subscribed.is_set():
            self.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"reference not subscribed after {timeout} s")
            await asyncio.sleep(0.05)

    async def stored(self) -> int:
        return self._stored

    @property
    def failed(self) -> int:
        return self._failed

    def empty_flushes(self) -> int:
        """How often hstreamdb's producer flushed an empty batch ("Empty payloads, ignored.").

        It happens when two appends that waited for the same flush both start the next one:
        the second replaces the batch the first queued, and that batch is never sent.
        """
        try:
            return self.log_path.read_text(errors="replace").count("Empty payloads, ignored.")
        except FileNotFoundError:
            return 0

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.join(5.0)
