"""``coordinator alerts``: one webhook notice per transition, sent from one place, by N replicas.

Each pool's event stream (``<prefix>:{<pool>}:events``, written exactly once per transition by the
script that made it) is read through a Redis consumer group, one per stream: a stream is one Cluster
slot, so one group per stream works on Cluster as on a single server. Every replica of the consumer
joins the same group under its own name, and Redis hands each entry to one of them (XREADGROUP).

- An entry is acknowledged (XACK) only after the webhook answered 2xx. Until then it stays in the
  group's pending list under the replica that holds it; any other answer, a timeout or a refused
  connection is retried with full-jitter backoff, without limit: nothing is dropped.
- A replica that dies leaves its pending entries behind; the others take them over (XAUTOCLAIM) once
  they have been idle for ``claim_after``. A live replica keeps the entries it is still working on
  fresh (XCLAIM to itself every ``claim_after / 4``), so a slow webhook is not mistaken for a dead
  replica. Only a delivery in flight when a replica dies can reach the webhook twice, with the same
  ``Idempotency-Key``.
- A new group starts at the stream's end (only transitions from now on) or, with ``from_start``, at
  its beginning (the stream keeps about the last 10,000 entries). Creating the group creates an empty
  stream for a pool that has none yet (MKSTREAM); the pool's scripts treat an empty stream as none.
  ``pool.reset()`` deletes the stream and with it the group: the consumer re-creates the group at the
  new stream's beginning, so the ``reset`` event is delivered too.
- Entries of one pool go out in stream order per replica; with several replicas they may interleave:
  receivers order by ``time`` and ``generation``, and de-duplicate by ``Idempotency-Key``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

import coordinator as co
from coordinator.observe._service import REDIS_ERRORS, fleet_coordinator, redis_scrubber, stop_on_sigterm
from coordinator.observe.webhook import (
    FORMATS,
    Delivery,
    Format,
    Webhook,
    decode_event,
    full_jitter,
    idempotency_key,
    iso,
)

_NAME_RE = re.compile(r"^[A-Za-z0-9._:@+-]{1,128}$")

Report = Callable[[dict[str, Any]], None]


def default_consumer() -> str:
    # Unique per replica: containers get their own hostname, processes on one host their own pid.
    name = re.sub(r"[^A-Za-z0-9._:@+-]", "-", socket.gethostname())[:64] or "host"
    return f"{name}-{os.getpid()}"


def check_name(what: str, name: str) -> str:
    if not _NAME_RE.match(name):
        raise co.ConfigError(f"{what} {name!r}: use 1 to 128 of A-Z a-z 0-9 . _ : @ + -")
    return name


@dataclass(frozen=True)
class AlertOptions:
    webhook: str
    format: Format = "json"
    #: The consumer group: every replica of one deployment uses the same; another group gets its own copy.
    group: str = "alerts"
    consumer: str = field(default_factory=default_consumer)
    from_start: bool = False
    #: Seconds an entry may sit unacknowledged with its replica silent before another takes it over.
    claim_after: float = 30.0
    retry_base: float = 0.5
    retry_max: float = 30.0
    #: Seconds one webhook request may take.
    timeout: float = 10.0
    #: Seconds one blocking read waits; also how late a stopping replica notices.
    block: float = 1.0

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise co.ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {self.format!r}")
        check_name("--group", self.group)
        check_name("--name", self.consumer)
        if not 1.0 <= self.claim_after <= 86400:
            raise co.ConfigError(f"--claim-after must be between 1s and 1d, not {self.claim_after}s")
        if not 0 < self.retry_base <= self.retry_max:
            raise co.ConfigError("--retry-max must be at least the first retry's delay "
                                 f"({self.retry_base}s), not {self.retry_max}s")


def _entries(reply: Any) -> list[tuple[str, dict[str, str] | None]]:
    """(id, fields) pairs from an XREADGROUP or XAUTOCLAIM reply, RESP2 or RESP3; fields are None for an
    entry that was trimmed from the stream while it was pending."""
    found: list[tuple[str, dict[str, str] | None]] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list | tuple):
            if len(value) == 2 and isinstance(value[0], str) and (value[1] is None or isinstance(value[1], dict)):
                found.append((value[0], value[1] or None))
                return
            for item in value:
                walk(item)

    walk(reply)
    return found


class AlertConsumer:
    """One replica: a thread per pool stream, plus one that keeps its in-flight entries claimed."""

    def __init__(self, client: Any, keys: co.KeySchema, pools: Sequence[str], options: AlertOptions,
                 webhook: Webhook, report: Report, scrub: Callable[[str], str] = lambda text: text) -> None:
        self.client = client
        self._scrub = scrub
        self.keys = keys
        self.pools = list(pools)
        self.options = options
        self.webhook = webhook
        self.report = report
        self.stop = threading.Event()
        self.delivered = 0
        #: (stream, entry id) -> True once another replica took the entry over.
        self._in_flight: dict[tuple[str, str], bool] = {}
        self._lock = threading.Lock()
        self._post_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- the group --

    def ensure_groups(self) -> None:
        """Creates the group on every pool's stream (raises when Redis cannot be reached: a replica
        that cannot start says so at once)."""
        for pool in self.pools:
            self._create_group(self.keys.events(pool), "0" if self.options.from_start else "$")

    def _create_group(self, stream: str, start: str) -> None:
        try:
            self.client.xgroup_create(stream, self.options.group, id=start, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # another replica created it first: that is the point
                raise

    # -- running --

    def start(self) -> None:
        for pool in self.pools:
            self._spawn(self._run_pool, pool, name=f"alerts-{pool}")
        self._spawn(self._keep_claimed, name="alerts-keeper")

    def _spawn(self, target: Callable[..., None], *args: Any, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _run_pool(self, pool: str) -> None:
        stream = self.keys.events(pool)
        opts = self.options
        own_pending = True  # first, what this consumer name held before a restart
        next_claim = 0.0
        failures = 0
        while not self.stop.is_set():
            try:
                if own_pending:
                    batch = _entries(self.client.xreadgroup(opts.group, opts.consumer, {stream: "0"}, count=10))
                    own_pending = bool(batch)
                elif time.monotonic() >= next_claim:
                    batch = self._claim_stale(pool, stream)
                    # Keep claiming while there is more; otherwise look again in half the idle time.
                    next_claim = 0.0 if batch else time.monotonic() + opts.claim_after / 2
                else:
                    block = max(1, round(min(opts.block, max(0.0, next_claim - time.monotonic())) * 1000))
                    reply = self.client.xreadgroup(opts.group, opts.consumer, {stream: ">"}, count=1, block=block)
                    batch = _entries(reply)
                self._handle(pool, stream, batch)
                failures = 0
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    # The stream was deleted (pool.reset, a Redis that lost its data): the new stream
                    # starts with entries no one has seen, so the new group starts at its beginning.
                    self._recreate(pool, stream)
                    continue
                failures += 1
                self._redis_trouble(pool, exc, failures)
            except REDIS_ERRORS as exc:
                failures += 1
                self._redis_trouble(pool, exc, failures)
            except Exception as exc:
                # A bug must not silently end this pool's alerts while the process looks alive.
                failures += 1
                self._redis_trouble(pool, exc, failures, kind="error")

    def _recreate(self, pool: str, stream: str) -> None:
        try:
            self._create_group(stream, "0")
            self.report({"event": "group_created", "pool": pool, "group": self.options.group, "start": "0"})
        except REDIS_ERRORS as exc:
            self._redis_trouble(pool, exc, 1)

    def _redis_trouble(self, pool: str, exc: Exception, failures: int, kind: str = "redis_error") -> None:
        wait = full_jitter(failures, 0.2, 5.0) + 0.05
        error = self._scrub(self.webhook.scrub(f"{type(exc).__name__}: {exc}"))[:300]
        self.report({"event": kind, "pool": pool, "error": error, "retry_in_s": round(wait, 3)})
        self.stop.wait(wait)

    def _claim_stale(self, pool: str, stream: str) -> list[tuple[str, dict[str, str] | None]]:
        opts = self.options
        reply = self.client.xautoclaim(stream, opts.group, opts.consumer, min_idle_time=round(opts.claim_after * 1000),
                                       start_id="0-0", count=10)
        batch = _entries(reply[1] if isinstance(reply, list | tuple) and len(reply) > 1 else reply)
        if batch:
            self.report({"event": "claimed", "pool": pool, "ids": [entry_id for entry_id, _ in batch],
                         "idle_s": opts.claim_after})
        return batch

    def _handle(self, pool: str, stream: str, batch: list[tuple[str, dict[str, str] | None]]) -> None:
        # Every entry of the batch is kept claimed (by the keeper) until it is handled, so no other
        # replica takes over an entry that this one is about to send.
        slots = [(stream, entry_id) for entry_id, _ in batch]
        with self._lock:
            for slot in slots:
                self._in_flight.setdefault(slot, False)
        try:
            for entry_id, fields in batch:
                if self.stop.is_set():
                    return  # what is left stays pending: this consumer, after a restart, or another, sends it
                self._handle_one(pool, stream, entry_id, fields)
                with self._lock:
                    self._in_flight.pop((stream, entry_id), None)
        finally:
            with self._lock:
                for slot in slots:
                    self._in_flight.pop(slot, None)

    def _handle_one(self, pool: str, stream: str, entry_id: str, fields: dict[str, str] | None) -> None:
        event = decode_event(pool, entry_id, fields) if fields else None
        if event is None:
            # Trimmed while pending, or not written by the coordinator: nothing to announce.
            self.report({"event": "skipped", "pool": pool, "id": entry_id,
                         "why": "trimmed from the stream" if not fields else "not a coordinator event"})
            self._ack(pool, stream, entry_id)
            return
        key = idempotency_key(self.keys.prefix, event)
        # One POST at a time per replica, whatever the pool, acknowledged before the next starts: a
        # replica killed at any moment leaves at most one alert that reached the webhook unacknowledged.
        while not self._post_lock.acquire(timeout=0.5):
            if self.stop.is_set():
                return
        try:
            delivery = self.webhook.deliver(event, key, self.stop, functools.partial(self._is_lost, (stream, entry_id)))
            if delivery.result == "delivered":
                self._ack(pool, stream, entry_id)
                self.delivered += 1
        finally:
            self._post_lock.release()
        if delivery.result == "delivered":
            self._report_delivery(event, key, delivery)
        elif delivery.result == "lost":
            self.report({"event": "taken_over", "pool": pool, "id": entry_id, "key": key})

    def _is_lost(self, slot: tuple[str, str]) -> bool:
        with self._lock:
            return self._in_flight.get(slot, True)

    def _ack(self, pool: str, stream: str, entry_id: str) -> None:
        failures = 0
        while True:
            try:
                self.client.xack(stream, self.options.group, entry_id)
                return
            except REDIS_ERRORS as exc:
                # Unacknowledged, it would be delivered again (same key) after a take-over: keep trying.
                failures += 1
                self._redis_trouble(pool, exc, failures)
                if self.stop.is_set():
                    return

    def _report_delivery(self, event: co.FailoverEvent, key: str, delivery: Delivery) -> None:
        self.report({"event": "delivered", "pool": event.pool, "id": event.id, "type": event.type, "key": key,
                     "status": delivery.status, "tries": delivery.tries, "seconds": round(delivery.seconds, 3)})

    def on_retry(self, event: co.FailoverEvent, tries: int, problem: str, wait: float) -> None:
        self.report({"event": "retrying", "pool": event.pool, "id": event.id, "tries": tries, "error": problem,
                     "retry_in_s": round(wait, 3)})

    # -- keeping in-flight entries claimed --

    def _keep_claimed(self) -> None:
        opts = self.options
        while not self.stop.wait(opts.claim_after / 4):
            with self._lock:
                held = [slot for slot, lost in self._in_flight.items() if not lost]
            for stream, entry_id in held:
                try:
                    pending = self.client.xpending_range(stream, opts.group, min=entry_id, max=entry_id, count=1)
                    if pending and pending[0].get("consumer") == opts.consumer:
                        # Claiming it to itself resets its idle time: no other replica takes it over.
                        self.client.xclaim(stream, opts.group, opts.consumer, 0, [entry_id], justid=True)
                        continue
                except Exception:
                    continue  # Redis is away (no other replica can take it over either), or worse: try again
                with self._lock:
                    if (stream, entry_id) in self._in_flight:
                        self._in_flight[(stream, entry_id)] = True


# -- output --------------------------------------------------------------------------------------------


def printer(json_lines: bool, out: Callable[[str], None]) -> Report:
    lock = threading.Lock()

    def report(record: dict[str, Any]) -> None:
        now = time.time()
        line = (json.dumps({"time": round(now, 3), "time_iso": iso(now), **record}, ensure_ascii=False)
                if json_lines else f"{datetime.fromtimestamp(now).astimezone():%Y-%m-%d %H:%M:%S}  {describe(record)}")
        with lock:
            out(line)

    return report


def describe(r: dict[str, Any]) -> str:
    kind = r["event"]
    if kind == "started":
        return (f"alerts: consumer {r['consumer']} in group {r['group']} on {', '.join(r['pools'])}; "
                f"webhook {r['webhook']} ({r['format']}); taking over entries idle for {r['claim_after_s']}s")
    if kind == "delivered":
        tries = f"{r['tries']} tr{'y' if r['tries'] == 1 else 'ies'}"
        return f"delivered {r['pool']} {r['id']} {r['type']}: HTTP {r['status']} after {tries} (key {r['key']})"
    if kind == "retrying":
        return (f"webhook failed for {r['pool']} {r['id']} ({r['error']}), try {r['tries']}; "
                f"retrying in {r['retry_in_s']:.1f}s")
    if kind == "claimed":
        return f"took over {len(r['ids'])} entr{'y' if len(r['ids']) == 1 else 'ies'} of {r['pool']} idle for " \
               f"over {r['idle_s']}s (a stopped replica's): {', '.join(r['ids'])}"
    if kind == "taken_over":
        return f"{r['pool']} {r['id']} was taken over by another replica, which delivers it"
    if kind == "redis_error":
        return f"Redis error on {r['pool']}: {r['error']}; retrying in {r['retry_in_s']:.1f}s"
    if kind == "error":
        return f"unexpected error on {r['pool']}: {r['error']}; retrying in {r['retry_in_s']:.1f}s"
    if kind == "group_created":
        return f"stream of {r['pool']} was re-created: group {r['group']} re-created at its beginning"
    if kind == "skipped":
        return f"skipped {r['pool']} {r['id']}: {r['why']}"
    if kind == "stopped":
        return f"alerts: stopped after {r['delivered']} deliveries"
    return json.dumps(r)


# -- the command ---------------------------------------------------------------------------------------


def run_alerts(config: co.Config, url: str, options: AlertOptions, *, json_lines: bool = False,
               out: Callable[[str], None] = print, stop: threading.Event | None = None) -> int:
    """Runs one replica until SIGTERM, Ctrl-C or ``stop``; returns the exit code (0)."""
    report = printer(json_lines, lambda line: out(line))
    coord = fleet_coordinator(config, url, timeout=options.block + 2.0)
    holder: list[AlertConsumer] = []
    webhook = Webhook(options.webhook, options.format, timeout=options.timeout, retry_base=options.retry_base,
                      retry_max=options.retry_max, on_retry=lambda *a: holder[0].on_retry(*a))
    consumer = AlertConsumer(coord.client, coord.keys, coord.pool_names, options, webhook, report, redis_scrubber(url))
    holder.append(consumer)
    if stop is not None:
        consumer.stop = stop
    restore = stop_on_sigterm(consumer.stop)
    try:
        consumer.ensure_groups()
        report({"event": "started", "consumer": options.consumer, "group": options.group, "pools": coord.pool_names,
                "webhook": webhook.shown, "format": options.format, "claim_after_s": options.claim_after,
                "start": "0" if options.from_start else "$"})
        consumer.start()
        try:
            while not consumer.stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            consumer.stop.set()  # Ctrl-C is how a foreground replica ends, not a failure
        consumer.join(options.block + options.timeout + 2.0)
        report({"event": "stopped", "delivered": consumer.delivered})
        return 0
    finally:
        restore()
        webhook.close()
        coord.close()


def alert_status(config: co.Config, url: str, group: str) -> dict[str, Any]:
    """The consumer group's state on every pool's stream (XINFO): what ``alerts --status`` shows."""
    check_name("--group", group)
    coord = fleet_coordinator(config, url, timeout=2.0)
    try:
        pools = []
        for pool in coord.pool_names:
            stream = coord.keys.events(pool)
            entry: dict[str, Any] = {"pool": pool, "stream": stream, "stream_exists": bool(coord.client.exists(stream)),
                                     "group_exists": False, "pending": None, "lag": None,
                                     "last_delivered_id": None, "consumers": []}
            if entry["stream_exists"]:
                for info in coord.client.xinfo_groups(stream):
                    if info.get("name") != group:
                        continue
                    entry.update(group_exists=True, pending=info.get("pending"), lag=info.get("lag"),
                                 last_delivered_id=info.get("last-delivered-id"))
                    entry["consumers"] = [
                        {"name": c.get("name"), "pending": c.get("pending"),
                         "idle_s": round(int(c.get("idle", 0)) / 1000.0, 3)}
                        for c in coord.client.xinfo_consumers(stream, group)
                    ]
            pools.append(entry)
        return {"group": group, "pools": pools}
    finally:
        coord.close()


def status_text(state: dict[str, Any]) -> str:
    lines = [f"alert group {state['group']}"]
    for p in state["pools"]:
        if not p["group_exists"]:
            lines.append(f"  {p['pool']}: no group yet (no replica has started on this pool)")
            continue
        lag = "unknown" if p["lag"] is None else p["lag"]
        lines.append(f"  {p['pool']}: {p['pending']} pending, {lag} not yet read, last read {p['last_delivered_id']}")
        for c in p["consumers"]:
            lines.append(f"    {c['name']}: {c['pending']} pending, idle {c['idle_s']:.1f}s")
    return "\n".join(lines)
