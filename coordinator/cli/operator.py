"""The operators' subcommands: check, status, events, park, unpark, rotate."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Sequence
from typing import NoReturn

from coordinator import (
    FailoverEvent,
    ParkResult,
    Pool,
    Snapshot,
)
from coordinator.cli.args import count_arg, duration_arg, since_arg
from coordinator.cli.registry import (
    EXIT_OK,
    FOLLOW_BLOCK,
    CliError,
    arg,
    command,
)
from coordinator.cli.render import (
    _rich_console,
    _status_view,
    clock,
    drift,
    event_text,
    in_order,
    one_line,
    pool_config_json,
    pool_config_text,
    safe_url,
    snapshot_json,
    span,
    warn,
)
from coordinator.cli.session import Session
from coordinator.observe.webhook import event_json, finite, iso
from coordinator.store.connect import parse_url


@command(
    "check",
    "validate the config file and list its pools (no Redis needed)",
    description="Validate the config file and list the pools it defines, with member ids and where "
    "each credential comes from. Never prints a secret and never connects to Redis.",
)
def check(session: Session) -> int:
    config = session.config
    url = session.url
    parse_url(url)
    redis_info = {"url": safe_url(url), "url_from": session.url_source, "prefix": config.redis.prefix}
    if session.json:
        session.print_json({
            "config": str(session.args.config),
            "valid": True,
            "redis": redis_info,
            "pools": [pool_config_json(pool) for pool in config.pools.values()],
        })
        return EXIT_OK
    count = len(config.pools)
    print(f"{session.args.config}: OK, {count} pool{'s' if count != 1 else ''}")
    print(f"redis: {redis_info['url']} (from {redis_info['url_from']}), key prefix {config.redis.prefix!r}")
    for pool in config.pools.values():
        print("\n".join(pool_config_text(pool)))
    if not count:
        warn(f"{session.args.config} defines no pools")
    return EXIT_OK


@command(
    "status",
    "show each pool's active member, cooldowns and parks",
    arg("pool", nargs="?", help="only this pool (default: every pool of the config)"),
)
def status(session: Session) -> int:
    if session.json:
        pools = session.pools(session.args.pool)
        session.print_json({"pools": [snapshot_json(pool.snapshot(), pool.config) for pool in pools]})
        return EXIT_OK
    console = _rich_console()  # before touching Redis: a missing rich is the first thing to fix
    pools = session.pools(session.args.pool)
    snapshots = [(pool, pool.snapshot()) for pool in pools]
    for i, (pool, snap) in enumerate(snapshots):
        if i:
            console.print()
        for part in _status_view(snap, pool.config):
            console.print(part)
    return EXIT_OK


@command(
    "events",
    "show the pools' transition log; --follow tails it live",
    arg("pool", nargs="?", help="only this pool (default: every pool of the config)"),
    arg("-f", "--follow", action="store_true", help="keep printing new events until Ctrl-C"),
    arg("--since", type=since_arg, metavar="WHEN",
        help="only events from WHEN on: a duration back (10m, 2h) or an ISO time (local time without an offset)"),
    arg("-n", "--limit", type=count_arg, default=50, metavar="N",
        help="show at most the newest N past events (default 50; 0 with --follow: only new ones)"),
)
def events(session: Session) -> int:
    args = session.args
    pools = session.pools(args.pool)
    since: float | None = None
    if args.since is not None:
        # A duration counts back from Redis' clock, which also stamps the events.
        since = args.since.at if args.since.at is not None else max(0.0, pools[0].snapshot().now - args.since.ago)
    histories: list[list[FailoverEvent]] = []
    cursors: dict[str, str] = {}
    for pool in pools:
        # At least one entry even for --limit 0: the newest id is where --follow starts reading.
        batch = pool.events(limit=max(args.limit, 1), since=since)
        cursors[pool.name] = batch[-1].id if batch else (f"{math.ceil(since * 1000)}-0" if since else "0-0")
        histories.append(batch)
    history = in_order(histories)
    shown = history[-args.limit:] if args.limit else []

    def emit(event: FailoverEvent) -> None:
        if session.json:
            session.print_json(event_json(event), indent=None)
        else:
            print(event_text(event), flush=True)

    if not args.follow:
        for event in shown:
            emit(event)
        return EXIT_OK
    try:
        for event in shown:
            emit(event)
        _follow(pools, cursors, emit)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a follow ends, not a failure
    return EXIT_OK


def _follow(pools: Sequence[Pool], cursors: dict[str, str], emit: Callable[[FailoverEvent], None]) -> NoReturn:
    # Each pool's stream has its own hash tag (its own Cluster slot), so one XREAD cannot cover
    # several pools; one thread per pool blocks on its own stream and hands batches to this one.
    inbox: queue.Queue[list[FailoverEvent] | Exception] = queue.Queue()
    stop = threading.Event()

    def tail(pool: Pool) -> None:
        cursor = cursors[pool.name]
        while not stop.is_set():
            try:
                batch = pool.events_after(cursor, block=FOLLOW_BLOCK, count=100)
            except Exception as exc:
                inbox.put(exc)
                return
            if batch:
                cursor = batch[-1].id
                inbox.put(batch)

    for pool in pools:
        threading.Thread(target=tail, args=(pool,), name=f"follow-{pool.name}", daemon=True).start()
    try:
        while True:
            try:
                item = inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            if isinstance(item, Exception):
                raise item
            for event in item:
                emit(event)
    finally:
        stop.set()


def _pool_and_member(session: Session) -> tuple[Pool, str]:
    pool = session.pools(session.args.pool)[0]
    member = session.args.member
    if pool.config.member(member) is None:
        known = ", ".join(m.id for m in pool.config.members)
        raise CliError(f"pool {pool.name!r} has no member {member!r} (members: {known})")
    return pool, member


def _checked_snapshot(pool: Pool) -> Snapshot:
    """The state before a write, refusing when this config's membership differs from the fleet's:
    the write would carry this config's membership into Redis and reconfigure the pool."""
    snap = pool.snapshot()
    mismatch = drift(snap, pool.config)
    if mismatch:
        raise CliError(f"{mismatch}; run the CLI with the workers' config (nothing was changed)")
    return snap


def _report(session: Session, action: str, before: Snapshot, result: ParkResult, reason: str | None,
            headline: str) -> int:
    until = finite(result.parked_until)
    if session.json:
        session.print_json({
            "action": action,
            "pool": result.pool,
            "member": result.member,
            "changed": result.transitioned,
            "parked_until": until,
            "parked_until_iso": iso(until),
            "forever": result.parked_until is not None and math.isinf(result.parked_until),
            "reason": reason or None,
            "active": result.active,
            "previous_active": before.active,
            "exhausted": result.exhausted,
            "epoch": result.epoch,
            "generation": result.generation,
            "events": list(result.events),
            "now": result.now,
            "now_iso": iso(result.now),
        })
        return EXIT_OK
    print(headline)
    if result.active != before.active:
        print(f"active: {before.active or '-'} -> {result.active or '-'}")
    else:
        print(f"active: {result.active or '-'} (unchanged)")
    if result.exhausted:
        print(f"pool {result.pool} is EXHAUSTED: every member is cooling or parked")
    return EXIT_OK


def _park_words(result: ParkResult, seconds: float | None, reason: str) -> str:
    if result.parked_until is None or math.isinf(result.parked_until):
        words = "until unparked"
    else:
        words = f"until {clock(result.parked_until, result.now)}"
        if seconds is not None:
            words = f"for {span(seconds)} ({words})"
    return f"{words}, reason: {reason}" if reason else words


@command(
    "park",
    "take a member out of service, until unparked or --for a while",
    arg("pool"),
    arg("member"),
    arg("--for", dest="duration", type=duration_arg, metavar="DURATION",
        help="park for this long (90s, 2h, 1h30m); default: until unparked"),
    arg("--reason", default="", help="shown in status and events"),
    description="Take a member out of service. Automatic logic never clears or shortens a park; parking "
    "the active member moves the pool to the next available one.",
)
def park(session: Session) -> int:
    pool, member = _pool_and_member(session)
    before = _checked_snapshot(pool)
    reason = one_line(session.args.reason)
    result = pool.park(member, seconds=session.args.duration, reason=reason)
    headline = f"parked {member} in pool {pool.name} {_park_words(result, session.args.duration, reason)}"
    return _report(session, "park", before, result, reason, headline)


@command(
    "unpark",
    "put a parked member back into service",
    arg("pool"),
    arg("member"),
    description="Clear a member's park and nothing else: a sticky pool does not move back to it.",
)
def unpark(session: Session) -> int:
    pool, member = _pool_and_member(session)
    before = _checked_snapshot(pool)
    result = pool.unpark(member)
    if result.transitioned:
        headline = f"unparked {member} in pool {pool.name}"
    else:
        headline = f"{member} in pool {pool.name} was not parked; nothing changed"
    return _report(session, "unpark", before, result, None, headline)


@command(
    "rotate",
    "move a pool off its active member by parking that member for a while",
    arg("pool"),
    arg("--for", dest="duration", type=duration_arg, metavar="DURATION",
        help="how long the current member stays parked (default: the pool's rotate_for)"),
    arg("--reason", default="manual", help="shown in status and events (default: manual)"),
)
def rotate(session: Session) -> int:
    pool = session.pools(session.args.pool)[0]
    before = _checked_snapshot(pool)
    reason = one_line(session.args.reason)
    seconds = session.args.duration
    result = pool.rotate(reason=reason, seconds=seconds)
    words = _park_words(result, seconds if seconds is not None else pool.config.rotate_for, reason)
    headline = f"rotated pool {pool.name} off {result.member}: parked {words}"
    return _report(session, "rotate", before, result, reason, headline)


