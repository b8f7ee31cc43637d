"""Retry delays shared by every reconnect and retry loop of the bridge."""

import math
import random


def backoff_delay(attempt: int, low: float, high: float) -> float:
    """Delay before retry number `attempt` (0-based): low * 2**attempt capped at high, times a
    random factor in [0.5, 1] so that replicas restarted together do not retry in step."""
    return min(high, math.ldexp(low, min(attempt, 32))) * random.uniform(0.5, 1.0)
