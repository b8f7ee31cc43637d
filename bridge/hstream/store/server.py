"""The embedded store as a gRPC server: `EmbeddedStore` (in-process) and `serve` (standalone)."""

import asyncio
import contextlib
import errno
import ipaddress
import logging
import signal
import socket
from pathlib import Path
from types import TracebackType
from typing import Final

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


def is_loopback_host(host: str) -> bool:
    """True for `localhost` and loopback IP literals; names are not resolved (not trusted).

    The same rule as `bridge.api.is_loopback`, kept here because `bridge.hstream` does not
    import the rest of the bridge.
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


STORE_AUTH_FLAGS: Final = "--username and --password, or --tls-cert and --tls-key"


def check_store_listen(listen: str, *, authenticated: bool, remedy: str = STORE_AUTH_FLAGS) -> None:
    """Refuse (ValueError, one line) to serve the store beyond loopback without protection.

    `authenticated` is whether the store will require Basic auth (a user name and a password)
    or serve TLS. A loopback address (`localhost`, 127.0.0.0/8, ::1) is always allowed; any
    other, wildcards included, needs `authenticated`. `remedy` names what to add, in the
    message; the default names the `hstream-bridge store` flags. Raises ValueError for a
    malformed address too.
    """
    host, _ = split_listen(listen)
    if authenticated or is_loopback_host(host):
        return
    raise ValueError(
        f"refusing to serve the HStreamDB API on {listen} without authentication or TLS:"
        f" add {remedy}, or listen on a loopback address such as 127.0.0.1"
    )


def _tls_files(
    cert_file: Path | None, key_file: Path | None, client_ca_file: Path | None
) -> tuple[Path, Path, Path | None] | None:
    """Check that the TLS options make sense together: cert and key, or neither."""
    if cert_file is None and key_file is None:
        if client_ca_file is not None:
            raise ValueError("a TLS client CA needs a server certificate and key")
        return None
    if cert_file is None or key_file is None:
        raise ValueError("TLS needs both a server certificate and its key")
    return Path(cert_file), Path(key_file), None if client_ca_file is None else Path(client_ca_file)


def server_credentials(
    cert_file: Path, key_file: Path, client_ca_file: Path | None = None
) -> grpc.ServerCredentials:
    """TLS with the certificate chain and key in PEM files; with `client_ca_file`, clients must
    present a certificate signed by that CA (mutual TLS).

    Raises ValueError for a file that cannot be read or holds no PEM of the expected kind:
    gRPC itself would only fail to bind, with the reason in its C-core log.
    """
    cert = _read_pem(cert_file, b"CERTIFICATE-----", "certificate")
    key = _read_pem(key_file, b"PRIVATE KEY-----", "private key")
    client_ca = None
    if client_ca_file is not None:
        client_ca = _read_pem(client_ca_file, b"CERTIFICATE-----", "CA certificate")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _read_pem(path: Path, marker: bytes, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the TLS {what} {path}: {exc.strerror}") from exc
    if b"-----BEGIN " not in data or marker not in data:
        raise ValueError(f"{path} holds no PEM {what}")
    return data


class EmbeddedStore:
    """A durable single-node HStreamDB-API server on SQLite, as an async context manager.

    After `__aenter__`, `.port` is the bound port (also when `listen` asked for port 0), and
    `.address`/`.url` are what clients should use. Lookups answer `advertised_host`, which
    defaults to the listen host (or this machine's host name when listening on a wildcard).

    With `tls_cert_file` and `tls_key_file` the store serves TLS only and `.url` is
    `hstreams://`. Clients verify the host they dial against the certificate, and they dial
    the advertised host after a lookup: that name (or IP) must be in the certificate's SANs.
    `tls_client_ca_file` makes client certificates signed by that CA mandatory.
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
        tls_cert_file: Path | None = None,
        tls_key_file: Path | None = None,
        tls_client_ca_file: Path | None = None,
    ) -> None:
        self._tls = _tls_files(tls_cert_file, tls_key_file, tls_client_ca_file)
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
    def tls(self) -> bool:
        return self._tls is not None

    @property
    def url(self) -> str:
        return f"{'hstreams' if self.tls else 'hstream'}://{self.address}"

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the store is not running")
        return self._engine

    async def start(self) -> None:
        # Read the PEM files first: a missing file fails before the data dir is opened.
        credentials = server_credentials(*self._tls) if self._tls is not None else None
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
            try:
                if credentials is not None:
                    self.port = server.add_secure_port(self.listen, credentials)
                else:
                    self.port = server.add_insecure_port(self.listen)
            except RuntimeError as exc:  # gRPC says only "Failed to bind to address"
                hint = " (or the TLS certificate and key do not match)" if credentials else ""
                raise OSError(
                    errno.EADDRNOTAVAIL, f"cannot listen on {self.listen}: {exc}{hint}"
                ) from exc
            servicer.port = self.port
            await server.start()
        except BaseException:
            await engine.close()
            self._engine = None
            raise
        self._server, self._servicer = server, servicer
        logger.info("embedded HStreamDB store on %s, data in %s", self.url, self.data_dir)

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
    tls_cert_file: Path | None = None,
    tls_key_file: Path | None = None,
    tls_client_ca_file: Path | None = None,
    handle_signals: bool = True,
) -> None:
    """Run the store until cancelled or, with `handle_signals`, until SIGTERM/SIGINT.

    TLS options as for `EmbeddedStore`.
    """
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
            tls_cert_file=tls_cert_file,
            tls_key_file=tls_key_file,
            tls_client_ca_file=tls_client_ca_file,
        ) as store:
            print(f"hstream store listening on {store.url}", flush=True)
            await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
