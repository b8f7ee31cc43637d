"""Which replica should run a CDC source: rendezvous (highest random weight) hashing over the
alive members. Only a proposal: the source database's lock decides, so a wrong or stale view
(a partition, a false suspicion) costs time, never a source run twice."""

import hashlib
from collections.abc import Iterable

__all__ = ["owner"]


def _weight(member: str, source: str) -> int:
    digest = hashlib.blake2b(f"{member}\0{source}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(source: str, members: Iterable[str]) -> str | None:
    """The member proposed for `source` (None when there is none); stable while the members
    are: a member joining or leaving moves only the sources it wins or held."""
    return max(members, key=lambda member: _weight(member, source), default=None)
