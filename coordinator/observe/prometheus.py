"""``PrometheusHook``: a worker's own calls as Prometheus metrics (``pip install 'coordinator[prometheus]'``).

Every series is labelled only with pool names, member ids, failure kinds, event types and outcomes:
names from the config and fixed words, never a secret, a URL or a provider message.

- ``coordinator_attempts_total{pool, member, outcome, kind}``: attempts; ``outcome`` is ``ok`` or
  ``error``, ``kind`` the failure kind (``none`` for a success).
- ``coordinator_transitions_total{pool, type}``: transitions by event type, counted only by the worker
  whose own script made the transition, so a sum over the fleet is exact (one per stream entry).
- ``coordinator_fallbacks_total{from_pool, pool}``: calls that moved on to a later pool of their chain.
- ``coordinator_call_duration_seconds{pool, outcome}``: whole calls (waits and backoff included);
  ``pool`` is the chain's first pool, ``outcome`` is ``ok``, ``error`` or ``cancelled``.
- ``coordinator_attempt_duration_seconds{pool, member, outcome}``: one attempt (until its first item,
  for a stream).

Only counters and histograms: they aggregate correctly in prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR``, see the README), which needs no per-gauge mode choices.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from coordinator import AttemptEvent, CallEvent, TransitionEvent
from coordinator.observe._calls import CallStack, CallState, outcome

#: Seconds: LLM calls take from tens of milliseconds (a cached or failed answer) to minutes (long generations).
DEFAULT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, float("inf"))


@dataclass(frozen=True)
class _Metrics:
    attempts: Counter
    transitions: Counter
    fallbacks: Counter
    call_duration: Histogram
    attempt_duration: Histogram


# One set of metric families per registry: a second hook (a second coordinator in the same worker)
# must add to the same series, and prometheus_client refuses to register a name twice.
_families: dict[int, tuple[CollectorRegistry, _Metrics]] = {}
_families_lock = threading.Lock()


def _metrics(registry: CollectorRegistry, buckets: Sequence[float]) -> _Metrics:
    with _families_lock:
        known = _families.get(id(registry))
        if known is not None and known[0] is registry:
            return known[1]
        metrics = _Metrics(
            attempts=Counter("coordinator_attempts", "Attempts of coord.call on one member.",
                             ["pool", "member", "outcome", "kind"], registry=registry),
            transitions=Counter("coordinator_transitions",
                                "Pool transitions this worker's own store calls made, by event type.",
                                ["pool", "type"], registry=registry),
            fallbacks=Counter("coordinator_fallbacks", "Calls that moved on to a later pool of their chain.",
                              ["from_pool", "pool"], registry=registry),
            call_duration=Histogram("coordinator_call_duration_seconds",
                                    "Duration of whole coord.call calls, waits and backoff included.",
                                    ["pool", "outcome"], buckets=buckets, registry=registry),
            attempt_duration=Histogram("coordinator_attempt_duration_seconds",
                                       "Duration of one attempt (until the first item, for a stream).",
                                       ["pool", "member", "outcome"], buckets=buckets, registry=registry),
        )
        _families[id(registry)] = (registry, metrics)
        return metrics


class PrometheusHook:
    """Counts a worker's attempts, transitions and fallbacks and times its calls::

        coord = co.Coordinator(url, pools, hooks=[co.PrometheusHook()])
        prometheus_client.start_http_server(9100)

    ``registry``: where the metrics live (default: prometheus_client's global ``REGISTRY``); every hook
    on the same registry shares one set of series. ``buckets``: histogram bounds, seconds.
    """

    #: Asks the coordinator for ``CallEvent``s, which frame calls and attempts.
    call_events = True

    def __init__(self, registry: CollectorRegistry = REGISTRY, buckets: Sequence[float] = DEFAULT_BUCKETS) -> None:
        self.registry = registry
        self._m = _metrics(registry, buckets)
        self._calls: CallStack[CallState] = CallStack("coordinator_prometheus_calls")

    def __call__(self, event: Any) -> None:
        if isinstance(event, AttemptEvent):
            self._attempt(event)
        elif isinstance(event, TransitionEvent):
            for kind in event.events:
                self._m.transitions.labels(event.pool, kind).inc()
        elif isinstance(event, CallEvent):
            self._call(event)

    def _attempt(self, event: AttemptEvent) -> None:
        result = "ok" if event.ok else "error"
        self._m.attempts.labels(event.pool, event.member, result, event.kind or "none").inc()
        self._m.attempt_duration.labels(event.pool, event.member, result).observe(event.elapsed)
        state = self._calls.top()
        if state is not None:
            state.last = event

    def _call(self, event: CallEvent) -> None:
        if event.phase == "start":
            self._calls.push(CallState(pools=event.pools))
            return
        if event.phase == "attempt":
            state = self._calls.top()
            if state is None:
                return
            moved_from = state.fallback_from(event)
            if moved_from is not None and event.pool is not None:
                self._m.fallbacks.labels(moved_from, event.pool).inc()
            state.pool = event.pool
            return
        state = self._calls.pop()
        if state is None:
            return
        result, _ = outcome(state, event)
        first = event.pools[0] if event.pools else ""
        self._m.call_duration.labels(first, result).observe(event.elapsed)
