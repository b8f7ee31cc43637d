"""The embedded, durable store that speaks the HStreamDB gRPC API (SQLite underneath).

`EmbeddedStore` runs it inside an event loop (the bridge does when no HStreamDB URL is given);
`serve` runs it on its own (`hstream-bridge store`, `python -m bridge.hstream.store`).
`check_store_listen` refuses a listen address beyond loopback without auth or TLS.
"""

from bridge.hstream.store.server import EmbeddedStore, check_store_listen, serve

__all__ = ["EmbeddedStore", "check_store_listen", "serve"]
