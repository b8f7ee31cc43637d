"""CPU seconds and peak RSS of running processes, measured from outside with psutil.

CPU is `cpu_times()` (user + system) read when the watch starts and when it stops; RSS is sampled
every 50 ms in a thread, and the peak kept. A process that exits mid-watch keeps the last values
read from it.
"""

import threading
from dataclasses import dataclass
from types import TracebackType

import psutil  # type: ignore[import-untyped]  # no types-psutil in the venv

SAMPLE_INTERVAL = 0.05


@dataclass(slots=True)
class Usage:
    cpu_seconds: float = 0.0
    peak_rss: int = 0  # bytes

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss / 2**20


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


class Watch:
    """Watch named pids: `start()`, run the load, `stop()` -> {name: Usage}."""

    def __init__(self, pids: dict[str, int]) -> None:
        self._processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self._cpu_start: dict[str, float] = {}
        self._cpu_last: dict[str, float] = {}
        self._peak: dict[str, int] = dict.fromkeys(pids, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="bench-watch", daemon=True)

    def _read(self, name: str) -> None:
        process = self._processes[name]
        try:
            with process.oneshot():
                self._cpu_last[name] = _cpu(process)
                self._peak[name] = max(self._peak[name], process.memory_info().rss)
        except psutil.Error:
            pass  # gone: keep what was last read

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            for name in self._processes:
                self._read(name)

    def start(self) -> None:
        for name in self._processes:
            self._read(name)
        self._cpu_start = dict(self._cpu_last)
        self._thread.start()

    def stop(self) -> dict[str, Usage]:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        for name in self._processes:
            self._read(name)
        return {
            name: Usage(
                self._cpu_last.get(name, 0.0) - self._cpu_start.get(name, 0.0), self._peak[name]
            )
            for name in self._processes
        }

    def __enter__(self) -> "Watch":
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
