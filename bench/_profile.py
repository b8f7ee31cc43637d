"""Profiling the bridge subprocess during a benchmark cell: py-spy (sampling) or cProfile.

py-spy attaches to the running bridge by pid (it needs ptrace: root, or
kernel.yama.ptrace_scope 0) and writes collapsed stacks ("folded", one `frame;frame;frame N` per
line, which speedscope and every flamegraph tool read) or, with format flamegraph, an SVG. The
top functions by self time are the leaf frames of the folded stacks. cProfile runs the bridge
under `python -m cProfile -o FILE` and writes its stats when the bridge exits cleanly (SIGTERM).
"""

import collections
import pstats
import shutil
import signal
import subprocess
import sys
from pathlib import Path

PY_SPY_RATE = 100  # samples/s: enough for a 10 s cell, light on a shared 2-core box


def find_py_spy() -> str | None:
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


class PySpy:
    """`py-spy record --pid PID` from `start()` until `stop()` (SIGINT makes it write the file)."""

    def __init__(self, pid: int, output: Path, *, fmt: str = "raw") -> None:
        binary = find_py_spy()
        if binary is None:
            raise FileNotFoundError("py-spy not found: pip install py-spy")
        self.output = output
        self.log = output.with_suffix(".py-spy.log")
        self.command = [
            binary, "record", "--pid", str(pid), "--rate", str(PY_SPY_RATE),
            "--format", fmt, "--output", str(output), "--nonblocking", "--function",
        ]  # fmt: skip
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.output.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                self.command, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    def stop(self, timeout: float = 30.0) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
        if not self.output.exists():
            raise RuntimeError(f"py-spy wrote no profile: {self.log.read_text(errors='replace')}")


def top_self_folded(path: Path, count: int = 15) -> list[tuple[str, float]]:
    """(function, share of samples) for the leaf frames with the most samples."""
    samples: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        leaf = stack.rsplit(";", 1)[-1]
        samples[leaf] += int(n)
        total += int(n)
    return [(frame, n / total) for frame, n in samples.most_common(count)] if total else []


def top_self_cprofile(path: Path, count: int = 15) -> list[tuple[str, float]]:
    """(function, share of profiled time) by cProfile's tottime."""
    stats = pstats.Stats(str(path))
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in entries.values()) or 1.0
    ranked = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:count]
    return [
        (f"{func} ({Path(file).name}:{line})", entry[2] / total)
        for (file, line, func), entry in ranked
    ]
