"""Full-jitter backoff: the bound grows as documented, is capped, never overflows, and a delay is a float
drawn inside it whatever the random source returns."""

from __future__ import annotations

import math
import random

import pytest

from coordinator.rules.backoff import ceiling, delay


class Fixed:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


def test_the_bound_doubles_from_base_up_to_the_cap() -> None:
    assert [ceiling(n, 0.5, 3.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_defaults_are_200ms_doubling_up_to_10s() -> None:
    assert ceiling(1) == pytest.approx(0.2)
    assert ceiling(3) == pytest.approx(0.8)
    assert ceiling(50) == 10.0
    assert delay(1, rng=Fixed(0.5)) == pytest.approx(0.1)
    assert delay(50, rng=Fixed(0.5)) == pytest.approx(5.0)


def test_attempts_count_from_one() -> None:
    assert ceiling(1, 1.0, 60.0) == 1.0
    with pytest.raises(ValueError, match="attempt counts from 1"):
        ceiling(0)
    with pytest.raises(ValueError):
        delay(-3, rng=Fixed(0.5))


def test_a_huge_attempt_number_stays_at_the_cap_without_overflow() -> None:
    assert ceiling(10**6, 0.2, 10.0) == 10.0
    assert delay(10**6, 0.2, 10.0, rng=Fixed(0.25)) == pytest.approx(2.5)


@pytest.mark.parametrize(("base", "cap"), [(0, 10), (0.0, 10.0), (-1, 10), (0.2, 0), (0.2, -5), (0, 0)])
def test_no_backoff_is_a_float_zero(base: float, cap: float) -> None:
    bound = ceiling(4, base, cap)
    assert bound == 0.0 and type(bound) is float
    wait = delay(4, base, cap, rng=Fixed(0.9))
    assert wait == 0.0 and type(wait) is float


def test_a_small_positive_base_still_backs_off() -> None:
    assert ceiling(1, 0.5, 10.0) == 0.5
    assert ceiling(2, 0.01, 0.5) == pytest.approx(0.02)


@pytest.mark.parametrize(("draw", "fraction"), [(0.0, 0.0), (0.25, 0.25), (0.999, 0.999), (1.0, 1.0), (7.0, 1.0),
                                                (-2.0, 0.0)])
def test_delay_is_the_draw_times_the_bound_clamped_to_it(draw: float, fraction: float) -> None:
    wait = delay(3, 0.5, 10.0, rng=Fixed(draw))
    assert wait == pytest.approx(2.0 * fraction)
    assert type(wait) is float


def test_an_integer_draw_still_gives_a_float() -> None:
    wait = delay(2, 1.0, 10.0, rng=Fixed(0))
    assert wait == 0.0 and type(wait) is float


def test_without_a_source_the_module_random_is_used_and_the_bound_holds() -> None:
    state = random.getstate()
    try:
        random.seed(1234)
        expected = random.Random(1234).random() * 0.8
        assert delay(3, 0.2, 10.0) == pytest.approx(expected)
        waits = [delay(3, 0.2, 10.0) for _ in range(200)]
    finally:
        random.setstate(state)
    assert all(0.0 <= w < 0.8 for w in waits)
    assert len(set(waits)) > 100, "jitter spreads the retries"
    assert not any(math.isnan(w) for w in waits)
