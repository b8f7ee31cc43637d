"""Listen addresses, and the Host check that keeps browsers' DNS rebinding off a loopback API.

A web page cannot read answers from another origin, but it can make the browser send requests,
and with DNS rebinding (a name of the attacker's that first resolves to the attacker's server,
then to 127.0.0.1) the browser treats the loopback API as the page's own origin: it could
delete rules and read the answers. What gives it away is the Host header, which names the
attacker's domain. So an API listening on loopback (served without a token) answers only
requests addressed to a loopback name: `localhost`, an address in 127.0.0.0/8 or `[::1]`, with
or without a port. Anything else, a missing Host included, is 421 Misdirected Request with a
JSON body saying why. An API listening beyond loopback needs a token already (a browser page
does not have it), and is reached under names this process cannot know, so every Host is
served there.
"""

import ipaddress
import json
from typing import Final

from starlette.types import ASGIApp, Receive, Scope, Send

from bridge.hstream.store.server import is_loopback_host as is_loopback

__all__ = ["LoopbackHostOnly", "is_loopback", "is_loopback_host_header", "parse_listen"]

MISDIRECTED: Final = 421


def parse_listen(listen: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces) -> (host, port); ValueError if not."""
    host, sep, port_text = listen.strip().rpartition(":")
    if not sep:
        raise ValueError(f"API listen address {listen!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(
            f"API listen address {listen!r}: port {port_text!r} is not a number"
        ) from None
    if not 0 <= port <= 65535:
        raise ValueError(f"API listen address {listen!r}: port {port} is out of range")
    return host or "0.0.0.0", port


def is_loopback_host_header(value: str) -> bool:
    """True when a Host header names loopback: `localhost`, `127.x.x.x` or `[::1]`, any port.

    IPv6 must be bracketed (`[::1]:8080`), as in a URL; a bare `::1` is not a valid Host.
    """
    host = value.strip()
    if host.startswith("["):
        literal, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not _is_port_suffix(rest)):
            return False
        try:
            return ipaddress.IPv6Address(literal).is_loopback
        except ValueError:
            return False
    name, colon, port = host.partition(":")
    if colon and not _is_port_suffix(colon + port):
        return False
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.IPv4Address(name).is_loopback
    except ValueError:
        return False


def _is_port_suffix(text: str) -> bool:
    return text.startswith(":") and text[1:].isascii() and text[1:].isdigit()


class LoopbackHostOnly:
    """ASGI middleware: 421 for HTTP requests whose Host header is not a loopback name.

    Put it outermost, so a refused request reaches nothing else (not even its body is read).
    Websocket handshakes to a foreign Host are closed (the API serves no websockets anyway).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = _host_header(scope)
        if host is not None and is_loopback_host_header(host):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        await _refuse(send, host)


def _host_header(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"host":
            return bytes(value).decode("latin-1")
    return None


async def _refuse(send: Send, host: str | None) -> None:
    shown = "no Host header" if host is None else f"Host {host[:200]!r}"
    detail = (
        f"{shown} is not served: this API listens on a loopback address and answers only"
        " requests addressed to localhost, 127.0.0.1 or [::1] (a guard against DNS rebinding)"
    )
    body = json.dumps({"detail": detail}, ensure_ascii=True).encode("ascii")
    await send(
        {
            "type": "http.response.start",
            "status": MISDIRECTED,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
