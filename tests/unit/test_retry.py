import random

import pytest

from pgqueue import Backoff, ValidationError


def test_bounds_double_until_the_cap() -> None:
    b = Backoff(base=1, cap=10, jitter=0.5)
    assert b.bounds(1) == (0.5, 1)
    assert b.bounds(2) == (1, 2)
    assert b.bounds(4) == (4, 8)
    assert b.bounds(5) == (5, 10)
    assert b.bounds(500) == (5, 10)  # huge attempt numbers neither overflow nor pass the cap


def test_delays_fall_within_bounds() -> None:
    rng = random.Random(1)
    b = Backoff(base=0.2, cap=30, jitter=0.5)
    for attempt in range(1, 20):
        low, high = b.bounds(attempt)
        delays = [b.delay(attempt, rng) for _ in range(200)]
        assert all(low <= d <= high for d in delays)
        assert max(delays) - min(delays) > 0 or low == high  # jitter really spreads them


def test_no_jitter_is_exact() -> None:
    assert Backoff(base=2, cap=100, jitter=0).delay(3) == 8


@pytest.mark.parametrize("kwargs", [{"base": -1}, {"base": 5, "cap": 1}, {"jitter": 1.5}])
def test_bad_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValidationError):
        Backoff(**kwargs)
