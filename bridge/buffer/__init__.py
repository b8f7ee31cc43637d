"""The durable local buffer (`--buffer disk`): acknowledgements follow a local fsync, and a
forwarder rides out HStreamDB outages from disk. See disk.py, forward.py and log.py."""

from bridge.buffer.disk import DiskBuffer
from bridge.buffer.forward import Forwarder
from bridge.buffer.log import Entry

__all__ = ["DiskBuffer", "Entry", "Forwarder"]
