"""Ports for the servers tests start (127.0.0.1 only)."""

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (servers bind it right after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
