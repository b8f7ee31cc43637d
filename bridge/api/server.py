"""`serve_api(bridge)`: uvicorn inside the bridge's own event loop, as an async context manager.

uvicorn normally installs SIGINT/SIGTERM handlers and re-raises the signal after its own
shutdown, which would end the process before the bridge has flushed its buffered records. The
service handles those signals itself (stop intake, flush, then leave this context), so the
server here captures no signals: leaving the context sets `should_exit` and waits, with a
bound, for uvicorn to close its connections.
"""

import asyncio
import contextlib
import ipaddress
import logging
import math
import socket
from collections.abc import AsyncIterator, Generator
from typing import Final

import uvicorn

from bridge.api.app import create_app
from bridge.api.hosts import is_loopback, parse_listen
from bridge.api.protocol import BridgeApi

__all__ = ["is_loopback", "parse_listen", "serve_api"]

logger = logging.getLogger(__name__)

START_TIMEOUT: Final = 10.0
"""Seconds uvicorn may take to start serving on an already bound socket."""


class _Server(uvicorn.Server):
    """uvicorn without signal handlers, reporting when it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The bridge owns SIGTERM/SIGINT: it drains the pipeline before anything exits.
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.listening.set()


def _bind(host: str, port: int) -> socket.socket:
    """A bound socket, so that port 0 resolves before uvicorn starts and bind errors are ours."""
    bind_host = "127.0.0.1" if host == "localhost" else host
    infos = socket.getaddrinfo(
        bind_host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
    )
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    return sock


def _base_url(sock: socket.socket) -> str:
    """The URL a local client uses: wildcard addresses are reached through loopback."""
    address = sock.getsockname()
    host, port = str(address[0]), int(address[1])
    ip = ipaddress.ip_address(host)
    if ip.is_unspecified:
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    text = f"[{ip}]" if ip.version == 6 else str(ip)
    return f"http://{text}:{port}"


@contextlib.asynccontextmanager
async def serve_api(
    bridge: BridgeApi,
    *,
    shutdown_timeout: float = 5.0,
    access_log: bool = False,
) -> AsyncIterator[str]:
    """Serve the API on `bridge.settings.api_listen` until the context exits; yield the base URL.

    Port 0 picks a free port (the yielded URL has the real one). Refuses (ValueError) to listen
    on a non-loopback address when no API token is set. `access_log` turns on one log line per
    request (uvicorn.access logger); off by default. On exit, open connections get
    `shutdown_timeout` seconds to finish before they are cut.
    """
    settings = bridge.settings
    host, port = parse_listen(settings.api_listen)
    if not settings.api_token and not is_loopback(host):
        raise ValueError(
            f"refusing to serve the HTTP API on {settings.api_listen} without an API token:"
            " set --api-token, or listen on a loopback address such as 127.0.0.1"
        )
    sock = await asyncio.to_thread(_bind, host, port)
    # uvicorn logs a request when the "uvicorn.access" logger has handlers, its own or (through
    # propagation) the root's: with access_log=False it drops its handlers and stops propagation,
    # but never turns propagation back on, so set it both ways here.
    logging.getLogger("uvicorn.access").propagate = access_log
    config = uvicorn.Config(
        create_app(bridge),
        lifespan="off",
        log_config=None,  # the service configured logging; uvicorn must not replace it
        log_level=None,
        access_log=access_log,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=max(1, math.ceil(shutdown_timeout)),
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="http-api")
    try:
        await _wait_listening(server, task)
        url = _base_url(sock)
        logger.info("HTTP API listening on %s", url)
        yield url
    finally:
        await _stop(server, task, shutdown_timeout)
        sock.close()


async def _wait_listening(server: _Server, task: "asyncio.Task[None]") -> None:
    listening = asyncio.create_task(server.listening.wait())
    try:
        done, _ = await asyncio.wait(
            {listening, task}, timeout=START_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        listening.cancel()
    if listening in done:
        return
    if task in done:
        task.result()  # raises what startup raised
        raise RuntimeError("the HTTP API server stopped while starting")
    raise TimeoutError(f"the HTTP API did not start within {START_TIMEOUT} s")


async def _stop(server: _Server, task: "asyncio.Task[None]", timeout: float) -> None:
    """Ask uvicorn to exit; force it after `timeout`, cancel it a second later if need be."""
    server.should_exit = True
    done, _ = await asyncio.wait({task}, timeout=timeout + 1.0)
    if not done:
        logger.warning("HTTP API did not stop within %.1f s; closing connections", timeout)
        server.force_exit = True
        done, _ = await asyncio.wait({task}, timeout=1.0)
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return
    if not task.cancelled() and task.exception() is not None:
        logger.error("HTTP API server failed", exc_info=task.exception())
