"""The embedded store as a gRPC server: `EmbeddedStore` (in-process) and `serve` (standalone)."""

import asyncio
import contextlib
import logging
import signal
import socket
from pathlib import Path
from types import TracebackType

import grpc

from bridge.hstream._api import add_servicer_to_server
from bridge.hstream.store.engine import Engine
from bridge.hstream.store.servicer import BasicAuthInterceptor, StoreServicer

logger = logging.getLogger(__name__)

DEFAULT_GRACE = 1.0
_WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def split_listen(listen: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:port`) into host and port."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address {listen!r} is not HOST:PORT")
    return host.strip("[]") if host.startswith("[") else host, int(port)


class EmbeddedStore:
    """A durable single-node HStreamDB-API server on SQLite, as an async context manager.

    After `__aenter__`, `.port` is the bound port (also when `listen` asked for port 0), and
    `.address`/`.url` are what clients should use. Lookups answer `advertised_host`, which
    defaults to the listen host (or this machine's host name when listening on a wildcard).
    """

    def __init__(
        self,
        data_dir: Path,
        listen: str = "127.0.0.1:0",
        advertised_host: str | None = None,
        max_record_bytes: int = 1 << 20,
        *,
        username: str | None = None,
        password: str | None = None,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.listen = listen
        host, _ = split_listen(listen)
        if advertised_host is None:
            advertised_host = socket.gethostname() if host in _WILDCARDS else host
        self.host = advertised_host
        self.max_record_bytes = max_record_bytes
        self._credentials = (username, password) if username is not None else None
        self._grace = grace
        self._engine: Engine | None = None
        self._server: grpc.aio.Server | None = None
        self._servicer: StoreServicer | None = None
        self.port = 0

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"hstream://{self.address}"

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the store is not running")
        return self._engine

    async def start(self) -> None:
        engine = Engine(self.data_dir)
        await engine.open()
        self._engine = engine
        try:
            interceptors = []
            if self._credentials is not None:
                user, password = self._credentials
                interceptors.append(BasicAuthInterceptor(user, password or ""))
            message_limit = max(64 << 20, 4 * self.max_record_bytes)
            server = grpc.aio.server(
                interceptors=interceptors,
                options=[
                    ("grpc.max_receive_message_length", message_limit),
                    ("grpc.max_send_message_length", message_limit),
                    ("grpc.so_reuseport", 0),
                ],
            )
            servicer = StoreServicer(engine, host=self.host, max_record_bytes=self.max_record_bytes)
            add_servicer_to_server(servicer, server)
            self.port = server.add_insecure_port(self.listen)
            servicer.port = self.port
            await server.start()
        except BaseException:
            await engine.close()
            self._engine = None
            raise
        self._server, self._servicer = server, servicer
        logger.info("embedded HStreamDB store on %s, data in %s", self.address, self.data_dir)

    async def stop(self) -> None:
        """End consumer streams, stop gRPC (short grace for calls in flight), close SQLite."""
        if self._servicer is not None:
            self._servicer.close_consumers()
        if self._server is not None:
            await self._server.stop(self._grace)
            self._server = None
        if self._engine is not None:
            await self._engine.close()
            self._engine = None

    async def __aenter__(self) -> "EmbeddedStore":
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def serve(
    listen: str,
    data_dir: Path,
    *,
    advertised_host: str | None = None,
    max_record_bytes: int = 1 << 20,
    username: str | None = None,
    password: str | None = None,
    handle_signals: bool = True,
) -> None:
    """Run the store until cancelled or, with `handle_signals`, until SIGTERM/SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    if handle_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
    try:
        async with EmbeddedStore(
            data_dir,
            listen,
            advertised_host,
            max_record_bytes,
            username=username,
            password=password,
        ) as store:
            print(f"hstream store listening on {store.address}", flush=True)
            await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
