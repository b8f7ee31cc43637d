"""CDC benchmark: rows inserted in PostgreSQL / MariaDB -> the bridge's CDC source -> the store.

    .venv/bin/python -m bench.cdc                          # both cells, 100,000 rows each
    .venv/bin/python -m bench.cdc --quick                  # smoke run, 10,000 rows
    .venv/bin/python -m bench.cdc --cells postgres --profile folded   # where the bridge's time goes

One cell per database, side by side in one run: "postgres" (a throwaway PostgreSQL 15, wal_level
logical, tests/support/postgres.py) and "mysql" (a throwaway MariaDB 10.11 with a row binlog,
tests/support/mariadb.py). Each cell gets its own database server, store process
(`python -m bridge.hstream.store`), Mosquitto (the bridge wants a broker even with no rules) and
bridge process (`python -m bridge run --config bridge.toml`, default settings) whose config has
one `[[sources]]` table: the table `rows`, stream `cdc_${source}_${table}`, snapshot "never".

Once the source is streaming, a writer process (its own process, so its CPU is not the
harness's or the bridge's) inserts `--rows` rows in transactions of `--txn-rows` rows, one
multi-row INSERT per transaction, into

    rows (id BIGINT PRIMARY KEY, device VARCHAR(32), temp DOUBLE, status VARCHAR(16),
          ts TIMESTAMP(3), payload JSONB / JSON)

(~150 bytes of values per row). The statements are built before the clock starts. The harness
polls the bridge's /metrics (`hstream_bridge_records_success_total` of the stream) until every
row is stored, then reads the stream back and checks that each id is there.

rows/s = rows / (store time of the last record - start of the first insert); the store time is
the `publish_time` the store stamps on each appended batch. "insert s" is how long the writer
took for all its transactions alone (the database's own write speed: when it is close to the
end-to-end time, the database, not the bridge, is the limit). "drain s" is the time from the
last commit to the last record stored. CPU seconds (user + system, psutil) are from just before
the first insert until the last record was stored; the database's CPU is its server process and
(PostgreSQL) every child of the postmaster that existed when the clock started (the writer's
backend, the walsender). Peak RSS of the bridge is sampled every 50 ms over the same span.
Results: stdout and bench/results/cdc.md (profiles next to it, `--profile`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]  # no types-psutil in the venv

from bench._profile import PySpy, top_self_folded
from bench._watch import Usage, Watch
from bridge.hstream.client import HStreamClient
from tests.support.mariadb import MariadbServer
from tests.support.mosquitto import Mosquitto
from tests.support.net import free_port
from tests.support.postgres import PostgresServer
from tests.support.store import REPO_ROOT, StoreProcess

RESULTS = Path(__file__).resolve().parent / "results"
CELLS = ("postgres", "mysql")
TITLES = {"postgres": "PostgreSQL 15 (pgoutput)", "mysql": "MariaDB 10.11 (row binlog)"}
TARGETS = {"postgres": 20_000.0}  # rows/s from the issue
TABLE = "rows"
SUCCESS_METRIC = "hstream_bridge_records_success_total"
CHANGES_METRIC = "hstream_bridge_cdc_changes_total"
PROBLEM_METRICS = (
    "hstream_bridge_records_failed_total",
    "hstream_bridge_records_dropped_total",
    "hstream_bridge_records_dead_lettered_total",
)
POLL_INTERVAL = 0.2  # /metrics scrapes cost the bridge CPU: 5 a second is ~1% of it
STATUS = ("ok", "warn", "alarm", "offline")
PG_TABLE = (
    f"CREATE TABLE {TABLE} (id BIGINT PRIMARY KEY, device VARCHAR(32), temp DOUBLE PRECISION,"
    " status VARCHAR(16), ts TIMESTAMP(3), payload JSONB)"
)
MY_TABLE = (  # ROWS is a reserved word in MariaDB: quoted
    f"CREATE TABLE `{TABLE}` (id BIGINT PRIMARY KEY, device VARCHAR(32), temp DOUBLE,"
    " status VARCHAR(16), ts TIMESTAMP(3) NULL, payload JSON)"
)


# --- the writer (its own process) -----------------------------------------------------------


def row_values(i: int) -> str:
    """One row's VALUES tuple, ~150 bytes of values; the same SQL for both databases."""
    ts = f"2026-11-30 12:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 1000:03d}"
    payload = (
        f'{{"fw": "2.4.{i % 10}", "battery": {i % 100}, "rssi": {-40 - i % 50}, '
        f'"site": "site-{i % 97:03d}", "seq": {i}}}'
    )
    return (
        f"({i}, 'device-{i % 1000:05d}', {15 + (i % 2000) / 100:.2f}, "
        f"'{STATUS[i % len(STATUS)]}', '{ts}', '{payload}')"
    )


def insert_statements(rows: int, txn_rows: int, table: str = TABLE) -> list[str]:
    """One multi-row INSERT per transaction, ids 1..rows, into `table` (as quoted)."""
    columns = f"INSERT INTO {table} (id, device, temp, status, ts, payload) VALUES "
    return [
        columns + ", ".join(row_values(i) for i in range(start, min(start + txn_rows, rows + 1)))
        for start in range(1, rows + 1, txn_rows)
    ]


def _writer_main(
    kind: str, connect: dict[str, Any], rows: int, txn_rows: int, pipe: Any, timeout: float
) -> None:
    """In the writer process: connect, build the statements, say "ready", wait for "go", run
    each statement as its own transaction (autocommit), send ("done", start, end) or ("error",
    text)."""
    try:
        statements = insert_statements(
            rows, txn_rows, TABLE if kind == "postgres" else f"`{TABLE}`"
        )
        conn: Any
        if kind == "postgres":
            import psycopg2

            conn = psycopg2.connect(**connect)
            conn.autocommit = True
        else:
            import pymysql

            conn = pymysql.connect(autocommit=True, **connect)
        try:
            cursor = conn.cursor()
            pipe.send(("ready", os.getpid()))
            if not pipe.poll(timeout) or pipe.recv() != "go":
                pipe.send(("error", "no go from the harness"))
                return
            start = time.time()
            for statement in statements:
                cursor.execute(statement)
            end = time.time()
            pipe.send(("done", start, end))
        finally:
            conn.close()
    except Exception:
        pipe.send(("error", traceback.format_exc()))


class Writer:
    """The writer process: `start()` (returns once connected and ready), `go()`, `wait()`."""

    def __init__(
        self, kind: str, connect: dict[str, Any], rows: int, txn_rows: int, timeout: float
    ) -> None:
        self.timeout = timeout
        context = multiprocessing.get_context("spawn")
        self._pipe, self._child = context.Pipe()
        self._process = context.Process(
            target=_writer_main,
            args=(kind, connect, rows, txn_rows, self._child, timeout),
            name=f"cdc-writer-{kind}",
            daemon=True,
        )
        self.pid = 0

    def _receive(self, timeout: float) -> tuple[Any, ...]:
        try:
            if not self._pipe.poll(timeout):
                raise TimeoutError(f"the writer said nothing for {timeout} s")
            message: tuple[Any, ...] = self._pipe.recv()
        except EOFError:
            raise RuntimeError("the writer exited without a word") from None
        if message[0] == "error":
            raise RuntimeError(f"writer failed:\n{message[1]}")
        return message

    def start(self) -> None:
        self._process.start()
        self._child.close()  # the writer's end lives in the writer: its exit wakes a receive
        self.pid = int(self._receive(60.0)[1])

    def go(self) -> None:
        self._pipe.send("go")

    def wait(self) -> tuple[float, float]:
        """(wall time of the first insert, wall time after the last commit)."""
        _, start, end = self._receive(self.timeout)
        return float(start), float(end)

    def close(self) -> None:
        """Kill the writer if it still runs (a `wait()` in another thread then ends)."""
        if self._process.pid is None:
            return
        if self._process.is_alive():
            self._process.kill()
        self._process.join(10)


# --- results --------------------------------------------------------------------------------


@dataclass(slots=True)
class CellResult:
    cell: str
    rows: int
    rate: float = 0.0  # rows / (last stored - first insert)
    span: float = 0.0  # seconds, first insert to last record stored
    insert_seconds: float = 0.0  # the writer alone
    drain_seconds: float = 0.0  # last commit to last stored
    stored: int = 0  # distinct ids read back
    records: int = 0  # records read back (stored + repeats)
    usage: dict[str, Usage] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    profile: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def bridge(self) -> Usage:
        return self.usage.get("bridge", Usage())

    @property
    def db_cpu(self) -> float:
        return sum(u.cpu_seconds for name, u in self.usage.items() if name.startswith("db"))

    @property
    def insert_rate(self) -> float:
        return self.rows / self.insert_seconds if self.insert_seconds else 0.0

    @property
    def cpu_us_per_row(self) -> float:
        return self.bridge.cpu_seconds / self.rows * 1e6 if self.rows else 0.0


def metric_sum(text: str, name: str, stream: str | None = None) -> float:
    """The sum of `name`'s series in Prometheus text (only those of `stream` when given)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line[len(name) : len(name) + 1] not in ("{", " "):
            continue
        if stream is not None and f'stream="{stream}"' not in line:
            continue
        total += float(line.rsplit(" ", 1)[1])
    return total


# --- processes of one cell ------------------------------------------------------------------


class Bridge:
    """`python -m bridge run` with the cell's config; its API on a free port."""

    def __init__(self, workdir: Path, args: list[str]) -> None:
        self.workdir = workdir
        self.api_url = ""
        self.args = args
        self.log_path = workdir / "bridge.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        port = free_port()
        self.api_url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable, "-m", "bridge", "run", "--data-dir", str(self.workdir / "data"),
            "--api-listen", f"127.0.0.1:{port}", *self.args,
        ]  # fmt: skip
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            )

    def check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"bridge exited with {self.process.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


async def wait_streaming(
    http: httpx.AsyncClient, bridge: Bridge, source: str, timeout: float
) -> None:
    """Until GET /sources/{source} says "streaming" (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    status: Any = None
    while time.monotonic() < deadline:
        bridge.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            response = await http.get(f"{bridge.api_url}/sources/{source}")
            if response.status_code == 200:
                status = response.json().get("status")
                if isinstance(status, dict) and status.get("state") == "streaming":
                    return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"source {source} not streaming after {timeout} s: {status}")


async def scrape(http: httpx.AsyncClient, bridge: Bridge) -> str:
    response = await http.get(f"{bridge.api_url}/metrics")
    response.raise_for_status()
    return response.text


async def wait_stored(
    http: httpx.AsyncClient,
    bridge: Bridge,
    stream: str,
    count: int,
    writing: asyncio.Task[tuple[float, float]],
    args: argparse.Namespace,
) -> str:
    """Poll /metrics until `count` records of `stream` are stored; the last scrape. Fails at
    --cell-timeout, when the writer fails, or when the writer is done and nothing more was
    stored for --stall-seconds."""
    now = time.monotonic()
    deadline, last_change = now + args.cell_timeout, now
    text, stored, last = "", 0.0, -1.0
    while True:
        bridge.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            text = await scrape(http, bridge)
            stored = metric_sum(text, SUCCESS_METRIC, stream)
            if stored >= count:
                return text
            problems = sum(metric_sum(text, name) for name in PROBLEM_METRICS)
            if problems:
                raise RuntimeError(f"the bridge failed, dropped or dead-lettered {problems:.0f}")
        now = time.monotonic()
        if stored != last:
            last, last_change = stored, now
        if writing.done():
            writing.result()  # the writer's error ends the cell here
            if now - last_change > args.stall_seconds:
                raise TimeoutError(
                    f"{stored:.0f} of {count} records stored, none for {args.stall_seconds} s "
                    f"after the last insert (--stall-seconds)\n{bridge.log_tail()}"
                )
        if now > deadline:
            raise TimeoutError(
                f"{stored:.0f} of {count} records stored after {args.cell_timeout} s "
                f"(--cell-timeout)\n{bridge.log_tail()}"
            )
        await asyncio.sleep(POLL_INTERVAL)


async def read_back(
    store: StoreProcess, stream: str, timeout: float
) -> tuple[set[int], int, float]:
    """(distinct row ids, records, last publish_time) of what `stream` holds."""
    ids: set[int] = set()
    records, last = 0, 0.0

    async def read() -> None:
        nonlocal records, last
        async with HStreamClient(store.url) as client, client.read_stream(stream) as reader:
            async for record in reader:
                records += 1
                last = max(last, record.publish_time)
                payload = record.payload
                if isinstance(payload, dict) and isinstance(payload.get("after"), dict):
                    ids.add(int(payload["after"]["id"]))

    await asyncio.wait_for(read(), timeout)
    return ids, records, last


def db_pids(kind: str, server: PostgresServer | MariadbServer) -> dict[str, int]:
    """The database server's processes to watch: mariadbd, or the postmaster and its children."""
    if isinstance(server, MariadbServer):
        process = server._process  # the benchmark watches the server's CPU
        assert process is not None
        return {"db": process.pid}
    pid = server.postmaster_pid()
    assert pid is not None
    children = psutil.Process(pid).children(recursive=True)
    return {"db": pid} | {f"db-{child.pid}": child.pid for child in children}


@contextlib.asynccontextmanager
async def database(
    kind: str, workdir: Path
) -> AsyncIterator[tuple[PostgresServer | MariadbServer, str, str, dict[str, Any]]]:
    """A started server with the table `rows`: (server, the CDC user's DSN, the qualified
    table, connection arguments for the writer). The server is removed afterwards."""
    if kind == "postgres":
        pg = PostgresServer()
        try:
            await asyncio.to_thread(pg.start)
            db = await asyncio.to_thread(pg.new_database)
            await asyncio.to_thread(pg.run_as, PG_TABLE, db=db)  # the CDC user owns it
            connect = {"host": str(pg.directory), "port": pg.port, "user": "postgres", "dbname": db}
            yield pg, pg.dsn(db=db), f"public.{TABLE}", connect
        finally:
            await asyncio.to_thread(pg.close)
    else:
        my = await asyncio.to_thread(MariadbServer)
        try:
            await asyncio.to_thread(my.start)
            db = await asyncio.to_thread(my.new_database)
            await asyncio.to_thread(my.make_cdc_user, db=db)
            await asyncio.to_thread(my.execute, MY_TABLE, db)
            connect = {
                "host": my.host,
                "port": my.port,
                "user": "root",
                "password": "",
                "database": db,
            }
            yield my, my.dsn(db=db), f"{db}.{TABLE}", connect
        finally:
            await asyncio.to_thread(my.close)


def toml_source(source: str, kind: str, dsn: str, table: str) -> str:
    return (
        "[[sources]]\n"
        f'id = "{source}"\n'
        f'kind = "{kind}"\n'
        f'dsn = "{dsn}"\n'
        f'tables = ["{table}"]\n'
        'stream = "cdc_${source}_${table}"\n'
        'snapshot = "never"\n'
    )


# --- one cell ---------------------------------------------------------------------------------


async def run_cell(args: argparse.Namespace, cell: str, workdir: Path) -> CellResult:
    result = CellResult(cell, args.rows)
    directory = workdir / cell
    directory.mkdir(parents=True, exist_ok=True)
    source = cell  # the source id: "postgres" or "mysql"
    stream = f"cdc_{source}_{TABLE}"
    async with contextlib.AsyncExitStack() as stack:
        server, dsn, table, connect = await stack.enter_async_context(database(cell, directory))
        broker = Mosquitto(directory / "mosquitto")
        stack.callback(broker.close)
        await asyncio.to_thread(broker.start)
        store = StoreProcess(directory / "store")
        stack.callback(store.kill)
        await store.start()
        config = directory / "bridge.toml"
        config.write_text(toml_source(source, cell, dsn, table))
        bridge = Bridge(
            directory / "bridge",
            [
                "--hstream-url", store.url, "--mqtt-url", broker.url, "--config", str(config),
                "--client-id", f"bench-cdc-{cell}", "--log-level", "warning",
            ],
        )  # fmt: skip
        stack.callback(bridge.stop)
        bridge.start()
        http = await stack.enter_async_context(httpx.AsyncClient(timeout=5.0))
        await wait_streaming(http, bridge, source, 60.0)

        writer = Writer(cell, connect, args.rows, args.txn_rows, args.cell_timeout)
        stack.callback(writer.close)
        await asyncio.to_thread(writer.start)
        spy: PySpy | None = None
        if args.profile:
            suffix = "svg" if args.profile == "svg" else "folded"
            fmt = "flamegraph" if args.profile == "svg" else "raw"
            spy = PySpy(bridge.pid, RESULTS / f"cdc-{cell}.{suffix}", fmt=fmt)
            spy.start()
            stack.callback(spy.stop)
            await asyncio.sleep(1.0)  # py-spy attached before the clock starts
        pids = {"bridge": bridge.pid, "store": store.pid or 0, "writer": writer.pid}
        pids |= db_pids(cell, server)
        before = await scrape(http, bridge)
        watch = Watch(pids)
        watch.start()
        writer.go()
        writing = asyncio.create_task(asyncio.to_thread(writer.wait))
        try:
            after = await wait_stored(http, bridge, stream, args.rows, writing, args)
        finally:
            result.usage = watch.stop()
            if not writing.done():
                writer.close()  # ends writer.wait() at once
        start, end = await writing
        if spy is not None:
            await asyncio.to_thread(spy.stop)
            if args.profile != "svg":
                result.profile = profile_lines(spy.output)
            result.notes.append(f"profile: {spy.output.relative_to(REPO_ROOT)}")
        ids, records, last = await read_back(store, stream, args.cell_timeout)
        result.stored, result.records = len(ids), records
        result.insert_seconds = end - start
        result.span = last - start
        result.drain_seconds = max(0.0, last - end)
        result.rate = len(ids) / result.span if result.span > 0 else 0.0
        if len(ids) < args.rows:
            result.notes.append(f"MISSING {args.rows - len(ids):,} of {args.rows:,} rows")
        if records > len(ids):
            result.notes.append(f"{records - len(ids):,} repeated records")
        changes = metric_sum(after, CHANGES_METRIC) - metric_sum(before, CHANGES_METRIC)
        result.notes.append(f"{changes:,.0f} changes counted by the source")
    return result


def profile_lines(path: Path, count: int = 12) -> list[str]:
    """Top functions of a folded py-spy profile: self time, and inclusive time."""
    lines = [
        "self: " + ", ".join(f"{name} {share:.1%}" for name, share in top_self_folded(path, count))
    ]
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        total += int(n)
        for frame in set(stack.split(";")):
            inclusive[frame] += int(n)
    if total:
        top = inclusive.most_common(count * 3)
        lines.append(
            f"inclusive ({total} samples): "
            + ", ".join(f"{name} {n / total:.1%}" for name, n in top)
        )
    return lines


# --- report -----------------------------------------------------------------------------------


def machine() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def render(args: argparse.Namespace, results: list[CellResult], command: str) -> str:
    out = [
        "# CDC: database rows to HStreamDB (bench/cdc.py)",
        "",
        "```sh",
        command,
        "```",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {machine()}. {args.rows:,} rows per cell in "
        f"transactions of {args.txn_rows:,} rows (one multi-row INSERT each), written by one "
        "process once the source streams.",
        "",
        "| cell | rows/s | insert s | DB insert rows/s | drain s | bridge CPU s | "
        "CPU us / row | bridge peak RSS MB | DB CPU s | store CPU s | stored | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.error:
            out.append(f"| {r.cell} | FAILED | | | | | | | | | | {r.error.splitlines()[0][:200]} |")
            continue
        out.append(
            f"| {r.cell} | {r.rate:,.0f} | {r.insert_seconds:.2f} | {r.insert_rate:,.0f} | "
            f"{r.drain_seconds:.2f} | {r.bridge.cpu_seconds:.2f} | {r.cpu_us_per_row:.1f} | "
            f"{r.bridge.peak_rss_mb:.0f} | {r.db_cpu:.2f} | "
            f"{r.usage.get('store', Usage()).cpu_seconds:.2f} | {r.stored:,}/{r.rows:,} | "
            f"{'; '.join(r.notes)} |"
        )
    out += ["", "Process CPU seconds over the same span:", ""]
    out += [
        "| cell | bridge | store | database | writer | span s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if not r.error:
            out.append(
                f"| {r.cell} | {r.bridge.cpu_seconds:.2f} | "
                f"{r.usage.get('store', Usage()).cpu_seconds:.2f} | {r.db_cpu:.2f} | "
                f"{r.usage.get('writer', Usage()).cpu_seconds:.2f} | {r.span:.2f} |"
            )
    out.append("")
    for r in results:
        target = TARGETS.get(r.cell)
        if target and not r.error:
            verdict = "met" if r.rate >= target else "NOT met"
            out.append(f"- {r.cell}: target >= {target:,.0f} rows/s: {verdict} ({r.rate:,.0f})")
        for line in r.profile:
            out.append(f"- {r.cell} profile {line}")
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.cdc", description=__doc__.split("\n")[0])
    parser.add_argument("--cells", default=",".join(CELLS), help="comma-separated: postgres,mysql")
    parser.add_argument("--rows", type=int, default=None, help="rows per cell (default 100000)")
    parser.add_argument("--txn-rows", type=int, default=1000, help="rows per transaction")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10,000 rows")
    parser.add_argument("--cell-timeout", type=float, default=300.0, help="seconds per wait")
    parser.add_argument(
        "--stall-seconds", type=float, default=30.0,
        help="give up when the inserts are done and nothing was stored for this long",
    )  # fmt: skip
    parser.add_argument(
        "--profile", choices=("folded", "svg"), default=None,
        help="py-spy the bridge: folded stacks (top functions printed) or a flamegraph SVG",
    )  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS / "cdc.md")
    args = parser.parse_args(argv)
    if args.rows is None:
        args.rows = 10_000 if args.quick else 100_000
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = set(cells) - set(CELLS)
    if unknown or not cells:
        parser.error(f"unknown cells {sorted(unknown)}; choose from {', '.join(CELLS)}")
    if args.rows < 1 or args.txn_rows < 1:
        parser.error("--rows and --txn-rows must be positive")
    args.cells = cells
    return args


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = ".venv/bin/python -m bench.cdc " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(command.rstrip(), flush=True)
    results: list[CellResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-cdc-") as tmp:
        for cell in args.cells:
            print(f"== {cell}: {args.rows:,} rows", flush=True)
            try:
                result = await run_cell(args, cell, Path(tmp))
            except Exception as exc:
                traceback.print_exc()
                result = CellResult(cell, args.rows, error=f"{type(exc).__name__}: {exc}")
            results.append(result)
            if not result.error:
                print(
                    f"   {result.rate:,.0f} rows/s, inserts {result.insert_seconds:.2f} s, "
                    f"bridge CPU {result.bridge.cpu_seconds:.2f} s", flush=True,
                )  # fmt: skip
    report = render(args, results, command.rstrip())
    print(report)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(report)
    failed = [r for r in results if r.error or r.stored < r.rows]
    return 1 if failed else 0


async def _main_cancelled_by_sigterm() -> int:
    """`main()`, cancelled on SIGTERM so that every server and process is still cleaned up."""
    task = asyncio.create_task(main())
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        print("cancelled (SIGTERM): cleaned up", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(asyncio.run(_main_cancelled_by_sigterm()))
