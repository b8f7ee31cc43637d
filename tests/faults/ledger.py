"""What a fault-injection scenario delivered: acknowledged, stored, dead-lettered, duplicated.

Every message of a scenario carries its number in its first 8 payload bytes (`payload(n)`), so a
record in its stream, a dead letter (which keeps the leading bytes even when cut to fit) and a
PUBLISH the MQTT proxy saw acknowledged all name the message they came from. `Ledger.check()`
holds the one invariant: every acknowledged message is stored, in its stream or as a dead letter.
"""

from dataclasses import dataclass, field

from tests.support.bridge import read_stream

DEAD_LETTERS = "bridge_dead_letter"
RESULTS: list["Ledger"] = []  # printed as a table at the end of the run (see conftest.py)


def payload(n: int, size: int = 32) -> bytes:
    """Message `n`: its number, then filler up to `size` bytes."""
    head = b"%08d|" % n
    return head + b"x" * max(0, size - len(head))


def number(data: bytes) -> int:
    return int(data[:8])


@dataclass
class Ledger:
    scenario: str
    messages: int
    acked: list[int] = field(default_factory=list)
    stored: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
    dead_reasons: dict[int, str] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        kept = [*self.stored, *self.dead]
        return len(kept) - len(set(kept))

    @property
    def lost(self) -> set[int]:
        """Acknowledged, but stored nowhere: what the invariant forbids."""
        return set(self.acked) - set(self.stored) - set(self.dead)

    def check(self) -> "Ledger":
        assert not self.lost, f"{self.scenario}: acknowledged but not stored: {sorted(self.lost)}"
        return self

    def row(self) -> str:
        return (
            f"| {self.scenario} | {self.messages} | {len(set(self.acked))} | "
            f"{len(set(self.stored))} | {len(set(self.dead))} | {self.duplicates} |"
        )


async def take_stock(
    scenario: str,
    messages: int,
    acked_payloads: list[bytes],
    store_url: str,
    streams: list[str],
    *,
    record: bool = True,
    check: bool = True,
) -> Ledger:
    """Read what the store holds now (directly, not through any fault) and check the invariant
    (with `check=False` the caller checks, e.g. against the disk buffer's files too)."""
    ledger = Ledger(scenario, messages, acked=[number(p) for p in acked_payloads])
    for stream in streams:
        for stored in await read_stream(store_url, stream):
            assert isinstance(stored.payload, bytes)
            ledger.stored.append(number(stored.payload))
    for letter in await read_stream(store_url, DEAD_LETTERS):
        assert isinstance(letter.payload, bytes)
        n = number(letter.payload)
        ledger.dead.append(n)
        ledger.dead_reasons[n] = letter.attributes.get("reason", "")
    if record:
        RESULTS.append(ledger)
    return ledger.check() if check else ledger
