"""The outage decision (docs/design.md, "When Redis is away"): may this call try Redis now?

Closed while Redis answers; after a failure it opens and lets one probe through per interval, so a
dead Redis costs the fleet one timeout per worker per ``probe_interval``, not one per call. Pure: the
clock is injected, and the lock only keeps the bookkeeping of concurrent callers consistent.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

DEFAULT_PROBE_INTERVAL = 1.0


class Breaker:
    """Closed while Redis answers; open after a failure, letting one probe through per interval."""

    def __init__(self, probe_interval: float = DEFAULT_PROBE_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.probe_interval = probe_interval
        self._clock = clock
        self._lock = threading.Lock()
        self.down_since: float | None = None
        self._next_probe = 0.0
        self._probing = False

    @property
    def open(self) -> bool:
        return self.down_since is not None

    def allow(self) -> bool:
        """May this call try Redis?"""
        if self.down_since is None:  # closed: nothing to book (a failure meanwhile is its own call's)
            return True
        with self._lock:
            if not self.open:  # closed by another caller meanwhile
                return True
            if not self._probing and self._clock() >= self._next_probe:
                self._probing = True
                return True
            return False

    def succeeded(self) -> bool:
        """Redis answered. True when that ends an outage."""
        if self.down_since is None and not self._probing:  # closed, and it stays so: nothing to change
            return False
        with self._lock:
            self._probing = False
            ended = self.down_since is not None
            self.down_since = None
            return ended

    def failed(self) -> bool:
        """Redis did not answer. True when that starts an outage."""
        with self._lock:
            self._probing = False
            now = self._clock()
            self._next_probe = now + self.probe_interval
            started = self.down_since is None
            if started:
                self.down_since = now
            return started
