"""Retry delays shared by every reconnect and retry loop of the bridge."""

import math
import random


def backoff_delay(attempt: int, low: float, high: float) -> float:
    """Delay before retry number `attempt` (0-based): low * 2**attempt capped at high, times a
    random factor in [0.5, 1] so that replicas restarted together do not retry in step."""
    return min(high, math.ldexp(low, min(attempt, 32))) * random.uniform(0.5, 1.0)


class Backoff:
    """Growing delays for one retry loop: `next()` after each failure, `reset()` on success."""

    __slots__ = ("attempt", "high", "low")

    def __init__(self, low: float, high: float) -> None:
        self.low = low
        self.high = high
        self.attempt = 0

    def next(self) -> float:
        delay = backoff_delay(self.attempt, self.low, self.high)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
