"""`hstream://[user:pass@]h1[:port][,h2[:port]]` (plain) and `hstreams://` (TLS) URLs."""

from dataclasses import dataclass
from urllib.parse import unquote

DEFAULT_PORT = 6570


@dataclass(frozen=True, slots=True)
class HStreamUrl:
    hosts: tuple[tuple[str, int], ...]
    tls: bool = False
    username: str | None = None
    password: str | None = None

    @property
    def targets(self) -> list[str]:
        return [f"{host}:{port}" for host, port in self.hosts]


def _host_port(part: str) -> tuple[str, int]:
    if part.startswith("["):  # [::1]:6570
        host, _, rest = part[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = part.rpartition(":") if ":" in part else (part, "", "")
    if not host:
        raise ValueError(f"missing host in {part!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad port in {part!r}")
    return host, int(port_text)


def parse_url(url: str) -> HStreamUrl:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("hstream", "hstreams"):
        raise ValueError(f"HStreamDB URL {url!r} must start with hstream:// or hstreams://")
    rest = rest.rstrip("/")
    username = password = None
    if "@" in rest:
        auth, rest = rest.rsplit("@", 1)
        user, _, pw = auth.partition(":")
        username, password = unquote(user), unquote(pw)
    if not rest:
        raise ValueError(f"HStreamDB URL {url!r} names no host")
    hosts = tuple(_host_port(part) for part in rest.split(",") if part)
    return HStreamUrl(hosts=hosts, tls=scheme == "hstreams", username=username, password=password)
