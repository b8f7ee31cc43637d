"""The embedded, durable store that speaks the HStreamDB gRPC API (SQLite underneath).

`EmbeddedStore` runs it inside an event loop (the bridge does when no HStreamDB URL is given);
`serve` runs it on its own (`hstream-bridge store`, `python -m bridge.hstream.store`).
"""

from bridge.hstream.store.server import EmbeddedStore, serve

__all__ = ["EmbeddedStore", "serve"]
