"""Rates for GET /stats, computed by the bridge from samples of its own counters.

No background task: each call of /stats takes a sample of the totals (at most one per
`MIN_SPACING` seconds is kept) and measures the rates against the oldest sample kept, which is
about `RATE_WINDOW` seconds old while someone polls more often than that, and the previous
call's when calls come further apart. So any number of consoles share one window, the
samples kept stay few (window / spacing), and an idle bridge does no work for it.
"""

import collections
import time
from collections.abc import Callable
from typing import Final

from bridge.api.models import BufferStats, RuleStats, Stats
from bridge.metrics import RuleTotals, Totals
from rules import Rule

RATE_WINDOW: Final = 10.0
"""Seconds the rates are averaged over, about."""
MIN_INTERVAL: Final = 0.5
"""A base sample younger than this gives no rate (too short to mean anything)."""
MIN_SPACING: Final = 0.5
"""Samples closer than this to the previous one are not kept."""

_NONE = RuleTotals()


class RateWindow:
    """Recent samples of the totals, oldest first; one per app (on `app.state`)."""

    def __init__(
        self, window: float = RATE_WINDOW, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window = window
        self._clock = clock
        self._samples: collections.deque[tuple[float, Totals]] = collections.deque()

    def observe(self, totals: Totals) -> tuple[float, Totals] | None:
        """Keep `totals` as a sample; the (age, totals) to measure rates against, or None."""
        now = self._clock()
        samples = self._samples
        # Keep at most one sample older than the window: the newest of them.
        while len(samples) > 1 and now - samples[1][0] >= self.window:
            samples.popleft()
        base = None
        if samples and now - samples[0][0] >= MIN_INTERVAL:
            base = (now - samples[0][0], samples[0][1])
        if not samples or now - samples[-1][0] >= MIN_SPACING:
            samples.append((now, totals))
        return base


def _rate(now: int, then: int, seconds: float | None) -> float | None:
    if seconds is None:
        return None
    # A series that went away (a forgotten idle stream) lowers a total: not a negative rate.
    return round(max(0, now - then) / seconds, 3)


def stats(rules: list[Rule], totals: Totals, base: tuple[float, Totals] | None) -> Stats:
    """The /stats body: every rule with its totals and rates, and the buffer."""
    seconds, before = base if base is not None else (None, None)
    rows = []
    for rule in rules:
        now = totals.rules.get(rule.id, _NONE)
        then = before.rules.get(rule.id, _NONE) if before is not None else _NONE
        rows.append(
            RuleStats(
                id=rule.id,
                enabled=rule.enabled,
                matched_total=now.matched,
                stored_total=now.stored,
                dead_lettered_total=now.dead_lettered,
                matched_per_second=_rate(now.matched, then.matched, seconds),
                stored_per_second=_rate(now.stored, then.stored, seconds),
                dead_lettered_per_second=_rate(now.dead_lettered, then.dead_lettered, seconds),
            )
        )
    return Stats(
        interval_seconds=round(seconds, 3) if seconds is not None else None,
        received_total=totals.received,
        received_per_second=_rate(
            totals.received, before.received if before is not None else 0, seconds
        ),
        unmatched_total=totals.unmatched,
        dropped_total=totals.dropped,
        rules=rows,
        buffer=BufferStats(
            queuing_records=totals.queuing_records,
            queuing_bytes=totals.queuing_bytes,
            budget_bytes=totals.budget_bytes,
            intake_paused=totals.intake_paused,
        ),
    )
