"""``coordinator metrics``: one fleet-level Prometheus exporter that reads the pools' state from Redis
at scrape time (``pip install 'coordinator[prometheus]'``). Run one per fleet, next to the workers'
own ``PrometheusHook`` metrics, which count what each worker did.

Series (labels hold pool names, member ids and fixed words only; never a secret):

- ``coordinator_member_state{pool, member, state}``: 1 for the state the member is in, 0 for the other
  three, so ``sum by (pool) (coordinator_member_state{state="cooling"})`` counts cooling members.
  States: ``active`` (the active member, serving), ``ready``, ``cooling``, ``parked``.
- ``coordinator_member_recovery_seconds{pool, member}``: seconds until the member can serve again, 0
  when it can now; a member parked until unparked has no sample (it recovers when an operator says so).
- ``coordinator_pool_generation{pool}``: the pool's generation, one step per transition (it restarts
  at 1 when the state is re-created: a new epoch).
- ``coordinator_pool_exhausted{pool}``: 1 while every member is cooling or parked.
- ``coordinator_pool_up{pool}``: 1 when the pool's state was read, 0 when it is unreadable (corrupt).
- ``coordinator_redis_up``: 1 when Redis answered this scrape; 0 and no pool series otherwise.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable

import prometheus_client
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

import coordinator as co
from coordinator.observe._service import REDIS_ERRORS, fleet_coordinator, redis_scrubber, stop_on_sigterm

STATES = ("active", "ready", "cooling", "parked")
UNAVAILABLE: tuple[type[Exception], ...] = (co.StoreError, *REDIS_ERRORS)
_log = logging.getLogger("coordinator")


def member_state(snap: co.Snapshot, member: co.MemberState) -> str:
    if member.parked:
        return "parked"
    if member.cooling_until is not None:
        return "cooling"
    return "active" if member.id == snap.active else "ready"


class FleetCollector(Collector):
    """Reads every pool's snapshot (one read-only script call each) when Prometheus scrapes."""

    def __init__(self, coordinator: co.Coordinator) -> None:
        self.coordinator = coordinator
        self._scrub = redis_scrubber(coordinator.url)

    def collect(self) -> Iterable[Metric]:
        state = GaugeMetricFamily("coordinator_member_state",
                                  "1 for the state each member is in now: active, ready, cooling or parked.",
                                  labels=["pool", "member", "state"])
        recovery = GaugeMetricFamily("coordinator_member_recovery_seconds",
                                     "Seconds until the member can serve again (0: now); none when parked "
                                     "until unparked.", labels=["pool", "member"])
        generation = GaugeMetricFamily("coordinator_pool_generation", "The pool's generation: one step per "
                                       "transition, restarting with a new epoch.", labels=["pool"])
        exhausted = GaugeMetricFamily("coordinator_pool_exhausted", "1 while every member is cooling or parked.",
                                      labels=["pool"])
        pool_up = GaugeMetricFamily("coordinator_pool_up", "1 when the pool's state could be read.",
                                    labels=["pool"])
        healed = GaugeMetricFamily("coordinator_pool_healed_timestamp_seconds", "When the pool's corrupt state "
                                   "was last rebuilt automatically (unix seconds); absent when it never was.",
                                   labels=["pool"])
        redis_up = GaugeMetricFamily("coordinator_redis_up", "1 when Redis answered this scrape.")
        up = 1
        for name in self.coordinator.pool_names:
            try:
                snap = self.coordinator.pool(name).snapshot()
            except co.CorruptStateError as exc:
                _log.warning("coordinator metrics: pool %s: %s", name, self._scrub(str(exc)))
                pool_up.add_metric([name], 0)
                continue
            except UNAVAILABLE as exc:
                _log.warning("coordinator metrics: Redis did not answer: %s", self._scrub(str(exc)))
                up = 0
                break
            pool_up.add_metric([name], 1)
            generation.add_metric([name], snap.generation)
            exhausted.add_metric([name], 1 if snap.exhausted else 0)
            if snap.healed_at is not None:
                healed.add_metric([name], snap.healed_at)
            for member in snap.members:
                current = member_state(snap, member)
                for candidate in STATES:
                    state.add_metric([name, member.id, candidate], 1 if candidate == current else 0)
                ready_at = member.ready_at
                if ready_at is None:
                    recovery.add_metric([name, member.id], 0)
                elif math.isfinite(ready_at):
                    recovery.add_metric([name, member.id], max(0.0, ready_at - snap.now))
        redis_up.add_metric([], up)
        if not up:
            return [redis_up]
        return [state, recovery, generation, exhausted, pool_up, healed, redis_up]


def run_metrics(config: co.Config, url: str, *, port: int, host: str = "127.0.0.1",
                out: Callable[[str], None] = print, stop: threading.Event | None = None,
                ready: Callable[[int], None] | None = None) -> int:
    """Serves /metrics on ``host:port`` until SIGTERM, Ctrl-C or ``stop``; returns the exit code (0).
    ``ready`` gets the port actually bound (``port`` 0 picks a free one)."""
    coord = fleet_coordinator(config, url, timeout=2.0)
    registry = CollectorRegistry()
    registry.register(FleetCollector(coord))
    stop = stop if stop is not None else threading.Event()
    restore = stop_on_sigterm(stop)
    try:
        try:
            server, thread = prometheus_client.start_http_server(port, addr=host, registry=registry)
        except OSError as exc:
            raise co.ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        bound = server.server_address[1]
        out(f"coordinator metrics: serving http://{host}:{bound}/metrics for pools {', '.join(coord.pool_names)}")
        if ready is not None:
            ready(int(bound))
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass  # Ctrl-C is how a foreground exporter ends
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        return 0
    finally:
        restore()
        coord.close()


__all__ = ["FleetCollector", "member_state", "run_metrics"]
