"""Exponential backoff with full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter").

Pure: the random source is passed in, so the sync and async executors share it and tests pin it.
"""

from __future__ import annotations

import random
from typing import Protocol


class RandomSource(Protocol):
    """Anything with ``random() -> float`` in [0, 1): ``random.Random``, ``secrets.SystemRandom``, a stub."""

    def random(self) -> float: ...


# 2**64 * any sane base is far beyond any cap; stopping the exponent here avoids float overflow.
_MAX_EXPONENT = 64


def ceiling(attempt: int, base: float = 0.2, cap: float = 10.0) -> float:
    """The largest delay full jitter may pick before retry number ``attempt`` (1 = first retry)."""
    if attempt < 1:
        raise ValueError(f"attempt counts from 1, got {attempt}")
    if base <= 0 or cap <= 0:
        return 0.0
    return min(cap, base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))


def delay(attempt: int, base: float = 0.2, cap: float = 10.0, rng: RandomSource | None = None) -> float:
    """Seconds to sleep before retry number ``attempt``: uniform in ``[0, min(cap, base * 2**(attempt-1)))``.

    Full jitter spreads the retries of a fleet that failed together, so they do not hit the
    recovering server in lockstep.
    """
    top = ceiling(attempt, base, cap)
    draw = (rng if rng is not None else random).random()
    # A stub returning 1.0 (or garbage) must not push the delay past the documented bound.
    draw = min(max(float(draw), 0.0), 1.0)
    return top * draw
