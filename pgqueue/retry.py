"""Retry policy: exponential backoff with jitter.

The delay before attempt ``n + 1`` after attempt ``n`` failed is drawn uniformly from
``[d * (1 - jitter), d]`` where ``d = min(cap, base * 2 ** (n - 1))``. The jitter spreads retries of jobs that
failed together (an outage) so they do not all come back at once. The delay is added to the database's
``now()``; the worker's clock is never used.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pgqueue.errors import ValidationError


@dataclass(frozen=True)
class Backoff:
    """``Backoff(base=1, cap=3600, jitter=0.5)``: 0.5-1 s, 1-2 s, 2-4 s, ... up to 30-60 min."""

    base: float = 1.0
    cap: float = 3600.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (self.base >= 0 and self.cap >= self.base):
            raise ValidationError(f"backoff needs 0 <= base <= cap, got base={self.base} cap={self.cap}")
        if not 0 <= self.jitter <= 1:
            raise ValidationError(f"backoff jitter must be between 0 and 1, got {self.jitter}")

    def bounds(self, attempt: int) -> tuple[float, float]:
        """(lowest, highest) delay after failed attempt number ``attempt`` (1-based)."""
        exponent = min(max(attempt - 1, 0), 62)  # 2**62 * base is past any cap; avoids float overflow
        high = min(self.cap, self.base * float(2**exponent))
        return high * (1 - self.jitter), high

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        low, high = self.bounds(attempt)
        return (rng or random).uniform(low, high)
