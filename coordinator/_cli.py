"""The ``coordinator`` command line: the operators' view of, and control over, the fleet's state.

A subcommand is one function decorated with ``@command(...)``; the decorator registers it in
``COMMANDS`` and ``build_parser()`` turns that registry into argparse subparsers.

Exit codes: 0 done; 2 misuse or nothing usable to work with (a bad config, URL, pool, member or
duration; Redis unreachable): one ``coordinator: error: ...`` line on stderr, nothing changed;
130 interrupted (except ``events --follow``, which Ctrl-C ends normally).

The ``--json`` shapes are documented in the README (Operator guide). Times there are unix seconds plus an
ISO 8601 UTC string; a park "until unparked" is ``until: null`` with ``forever: true``, never Infinity.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import queue
import re
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote, urlparse

import redis
from redis.exceptions import RedisClusterException

from . import (
    Config,
    Coordinator,
    CoordinatorError,
    FailoverEvent,
    Member,
    MemberState,
    ParkResult,
    Pool,
    PoolConfig,
    Snapshot,
    StoreUnavailableError,
    load_config,
    parse_duration,
)
from ._backend import parse_url, redact

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DEFAULT_CONFIG = "coordinator.toml"
REDIS_URL_ENV = "COORDINATOR_REDIS_URL"
# An operator's command must answer at once when Redis is gone, not after the library's longer
# worker timeouts. The read timeout must stay above FOLLOW_BLOCK.
CONNECT_TIMEOUT = 1.0
READ_TIMEOUT = 5.0
# How long one XREAD waits; also how late a follow thread notices that it should stop.
FOLLOW_BLOCK = 1.0
_CLIENT_REPR = re.compile(r"<redis\.\S*\(.*\)>")
RICH_HINT = "the table view needs rich: pip install 'coordinator[cli]' (or add --json)"


class CliError(Exception):
    """Misuse found by the CLI itself; main() prints it as one line and exits 2."""


# -- the registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """The positional and keyword arguments of one ``ArgumentParser.add_argument`` call."""

    flags: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict)


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


Handler = Callable[["Session"], int]


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    arguments: tuple[Arg, ...]
    run: Handler
    description: str = ""


#: Every subcommand, in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {}


def command(name: str, summary: str, *arguments: Arg, description: str = "") -> Callable[[Handler], Handler]:
    """Registers the decorated function as the subcommand ``name`` taking ``arguments``."""

    def register(run: Handler) -> Handler:
        if name in COMMANDS:
            raise RuntimeError(f"subcommand {name!r} is registered twice")
        COMMANDS[name] = Command(name, summary, arguments, run, description or summary)
        return run

    return register


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line in the CLI's own error format (argparse would print usage plus its own prefix).
        self.exit(EXIT_USAGE, f"coordinator: error: {message} (see '{self.prog} --help')\n")


def _add_global_options(parser: argparse.ArgumentParser, *, on_subcommand: bool) -> None:
    # The same options are accepted before and after the subcommand. On subparsers they default to
    # SUPPRESS, so leaving them out there does not overwrite a value given before the subcommand.
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if on_subcommand else value

    parser.add_argument(
        "--config", metavar="PATH", default=default(DEFAULT_CONFIG),
        help=f"the workers' coordinator.toml (default: ./{DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--redis", metavar="URL", default=default(None),
        help=f"Redis URL; overrides ${REDIS_URL_ENV}, which overrides the config's [redis] url",
    )
    parser.add_argument("--json", action="store_true", default=default(False), help="machine-readable output")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="coordinator",
        description="Inspect and steer the fleet-wide failover state that coordinator keeps in Redis.",
    )
    _add_global_options(parser, on_subcommand=False)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for cmd in COMMANDS.values():
        sub = subparsers.add_parser(cmd.name, help=cmd.summary, description=cmd.description)
        for argument in cmd.arguments:
            sub.add_argument(*argument.flags, **argument.options)
        _add_global_options(sub, on_subcommand=True)
        sub.set_defaults(handler=cmd.run)
    return parser


# -- argument types ----------------------------------------------------------------------------------


def duration_arg(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must be more than 0")
    return seconds


@dataclass(frozen=True)
class Since:
    """``--since``: either a duration back from Redis' clock, or an absolute time."""

    ago: float | None = None
    at: float | None = None


def since_arg(text: str) -> Since:
    try:
        return Since(ago=parse_duration(text))
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: use a duration back from now like 10m or 2h, "
            "or an ISO time like 2025-01-31T14:00:00Z"
        ) from None
    # A time without an offset is this machine's local time, as Python reads it.
    return Since(at=moment.timestamp())


def count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: expected a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid count {text!r}: must not be negative")
    return value


# -- formatting --------------------------------------------------------------------------------------


def iso(stamp: float | None) -> str | None:
    if stamp is None or not math.isfinite(stamp):
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def finite(stamp: float | None) -> float | None:
    return stamp if stamp is not None and math.isfinite(stamp) else None


def span(seconds: float) -> str:
    """``45s``, ``4m 12s``, ``2h``, ``2h 05m``, ``3d 4h``: coarse enough to read at a glance."""
    total = max(0, math.ceil(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes:02d}m" if minutes else f"{hours}h"
    if minutes:
        return f"{minutes}m {secs:02d}s" if secs else f"{minutes}m"
    return f"{secs}s"


def clock(stamp: float, now: float) -> str:
    """Local wall-clock time; with the date when it is not within a day of ``now``."""
    moment = datetime.fromtimestamp(stamp).astimezone()
    if abs(stamp - now) < 86400:
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d %H:%M")


def one_line(text: str) -> str:
    return " ".join(text.split())


def dump_json(data: Any, *, indent: int | None = 2) -> str:
    # allow_nan=False: a stray inf (a park "forever") must fail here, not reach a parser as Infinity.
    return json.dumps(data, allow_nan=False, indent=indent, ensure_ascii=False)


def member_state(member: MemberState) -> str:
    if member.parked:
        return "parked"
    if member.cooling_until is not None:
        return "cooling"
    return "ready"


def snapshot_json(snap: Snapshot, config: PoolConfig) -> dict[str, Any]:
    now = snap.now
    members = []
    for m in snap.members:
        cooling = None
        if m.cooling_until is not None:
            cooling = {
                "until": m.cooling_until,
                "until_iso": iso(m.cooling_until),
                "left_s": round(m.cooling_until - now, 3),
                "kind": m.cooling_kind or None,
            }
        parked = None
        if m.parked:
            until = finite(m.parked_until)
            parked = {
                "until": until,
                "until_iso": iso(until),
                "left_s": round(until - now, 3) if until is not None else None,
                "forever": until is None,
                "reason": m.reason or None,
            }
        members.append({
            "id": m.id,
            "position": m.position,
            "weight": m.weight,
            "active": m.id == snap.active,
            "state": member_state(m),
            "cooling": cooling,
            "parked": parked,
            "failures": m.failures,
            "ejections": m.ejections,
        })
    return {
        "pool": snap.pool,
        "strategy": snap.strategy,
        "active": snap.active,
        "epoch": snap.epoch,
        "generation": snap.generation,
        "version": snap.version,
        "exhausted": snap.exhausted,
        "initialized": snap.epoch is not None,
        "matches_config": drift(snap, config) is None,
        "now": now,
        "now_iso": iso(now),
        "skipped_until": snap.skipped_until,
        "skipped_until_iso": iso(snap.skipped_until),
        "probe_member": snap.probe_member,
        "members": members,
    }


def event_json(event: FailoverEvent) -> dict[str, Any]:
    until = finite(event.until)
    return {
        "id": event.id,
        "pool": event.pool,
        "type": event.type,
        "time": event.time,
        "time_iso": iso(event.time),
        "epoch": event.epoch,
        "generation": event.generation,
        "from": event.from_member,
        "to": event.to_member,
        "member": event.member,
        "kind": event.kind,
        "reason": event.reason or None,
        "until": until,
        "until_iso": iso(until),
        "forever": event.until is not None and math.isinf(event.until),
        "retry_at": finite(event.retry_at),
        "retry_at_iso": iso(finite(event.retry_at)),
    }


def event_text(event: FailoverEvent) -> str:
    details = []
    if event.from_member and event.to_member:
        details.append(f"{event.from_member} -> {event.to_member}")
    elif event.to_member:
        details.append(f"active {event.to_member}")
    elif event.from_member:
        details.append(f"from {event.from_member}")
    if event.member and event.member not in (event.from_member, event.to_member):
        details.append(f"member {event.member}")
    elif event.member and not details:
        details.append(event.member)
    if event.kind:
        details.append(f"({event.kind})")
    if event.until is not None:
        details.append("until unparked" if math.isinf(event.until) else f"until {clock(event.until, event.time)}")
    if event.retry_at is not None and math.isfinite(event.retry_at):
        details.append(f"retry at {clock(event.retry_at, event.time)}")
    if event.reason:
        details.append(f"reason: {event.reason}")
    stamp = datetime.fromtimestamp(event.time).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp}  {event.pool}  gen {event.generation:<4} {event.type:<12} {'  '.join(details)}".rstrip()


def _stream_order(event: FailoverEvent) -> tuple[int, int, str]:
    millis, _, seq = event.id.partition("-")
    return (int(millis), int(seq or 0), event.pool)


def drift(snap: Snapshot, config: PoolConfig) -> str | None:
    """How the membership stored in Redis differs from this config; None when it does not."""
    if snap.epoch is None:
        return None
    stored = [(m.id, m.weight) for m in snap.members]
    wanted = [(m.id, m.weight) for m in config.members]
    if stored == wanted and snap.strategy == config.strategy:
        return None
    return (
        f"pool {snap.pool!r} in Redis is {snap.strategy} [{', '.join(m.id for m in snap.members)}] "
        f"but this config says {config.strategy} [{', '.join(m.id for m in config.members)}]"
    )


def url_password(url: str) -> str | None:
    try:
        password = parse_url(url).password
    except CoordinatorError:
        password = None
    if password:
        return password
    try:
        return urlparse(url).password
    except ValueError:
        return None


def safe_url(url: str) -> str:
    """A URL fit to print: no password, no query string (it may carry tokens)."""
    return redact(url).split("?", 1)[0].split("#", 1)[0]


# -- the session: config, client and output for one invocation -----------------------------------------


class Session:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.json = bool(getattr(args, "json", False))
        self._coordinator: Coordinator | None = None
        self._url: str | None = None

    @functools.cached_property
    def config(self) -> Config:
        path = Path(self.args.config)
        if not path.exists():
            raise CliError(f"{path}: config file not found (give the workers' config with --config PATH)")
        return load_config(path)

    @property
    def url(self) -> str:
        """``--redis``, else $COORDINATOR_REDIS_URL (load_config applies it), else the config's."""
        if self._url is None:
            self._url = self.args.redis or self.config.redis.url
        return self._url

    @property
    def url_source(self) -> str:
        if self.args.redis:
            return "--redis"
        if os.environ.get(REDIS_URL_ENV):
            return REDIS_URL_ENV
        return "config"

    @property
    def coordinator(self) -> Coordinator:
        if self._coordinator is None:
            config, url = self.config, self.url
            target = parse_url(url)
            if target.kind == "memory":
                warn(f"{url} keeps state inside this one process; point --redis or ${REDIS_URL_ENV} "
                     "at the fleet's Redis")
            client = None
            if target.kind == "single":
                try:
                    client = redis.Redis.from_url(
                        url, decode_responses=True,
                        socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=READ_TIMEOUT,
                    )
                except ValueError as exc:
                    raise CliError(f"invalid Redis URL {safe_url(url)!r}: {exc}") from None
            # Cluster and Sentinel clients connect while they are built; the library's own timeouts apply.
            # An operator's view is always read from Redis, never from a local decision.
            self._coordinator = Coordinator.from_config(config, url=url, client=client, staleness=0,
                                                        local_fallback=False)
        return self._coordinator

    def pools(self, name: str | None) -> list[Pool]:
        coord = self.coordinator
        if name:
            return [coord.pool(name)]
        if not coord.pool_names:
            raise CliError(f"{self.args.config} defines no pools")
        return [coord.pool(n) for n in coord.pool_names]

    def print_json(self, data: Any, *, indent: int | None = 2) -> None:
        print(dump_json(data, indent=indent), flush=True)

    def secrets(self) -> list[str]:
        """Every secret this invocation knows of, to scrub from error text."""
        found: list[str] = []
        for url in (self.args.redis, os.environ.get(REDIS_URL_ENV), self._url):
            password = url_password(url) if url else None
            if password:
                found += [password, unquote(password)]
        if "config" in self.__dict__:
            for pool in self.config.pools.values():
                found += [secret for member in pool.members if (secret := member.secret())]
        return found

    def fail(self, exc: BaseException) -> int:
        message = self.describe(exc)
        for secret in self.secrets():
            message = message.replace(secret, "***")
        print(f"coordinator: error: {one_line(message)}", file=sys.stderr, flush=True)
        return EXIT_USAGE

    def describe(self, exc: BaseException) -> str:
        where = safe_url(self._url) if self._url else "the configured URL"
        unreachable = StoreUnavailableError | redis.ConnectionError | redis.TimeoutError | RedisClusterException
        if isinstance(exc, unreachable):
            cause = exc.__cause__ if isinstance(exc, StoreUnavailableError) and exc.__cause__ else exc
            # Sentinel errors embed the repr of a whole client: noise on an operator's one line.
            return f"cannot reach Redis at {where}: {_CLIENT_REPR.sub('<redis client>', str(cause))}"
        if isinstance(exc, redis.RedisError):
            return f"Redis at {where} answered with an error: {exc}"
        return str(exc)

    def close(self) -> None:
        if self._coordinator is not None:
            # Closing a client that never connected may fail; there is nothing left to do then.
            with contextlib.suppress(Exception):
                self._coordinator.close()


def warn(message: str) -> None:
    print(f"coordinator: warning: {message}", file=sys.stderr, flush=True)


# -- subcommands -------------------------------------------------------------------------------------


def credential_source(member: Member) -> dict[str, Any]:
    """Where a member's secret comes from, never the secret itself."""
    if member.api_key is not None:
        return {"source": "config", "env": None}
    if member.api_key_env:
        return {"source": "env", "env": member.api_key_env}
    return {"source": "none", "env": None}


def pool_config_json(pool: PoolConfig) -> dict[str, Any]:
    return {
        "name": pool.name,
        "strategy": pool.strategy,
        "members": [
            {
                "id": member.id,
                "position": i,
                "weight": member.weight,
                "model": member.model,
                "base_url": safe_url(member.base_url) if member.base_url else None,
                "headers": sorted(member.headers),  # names only: values may be credentials
                "credential": credential_source(member),
            }
            for i, member in enumerate(pool.members)
        ],
        "cooldown": pool.cooldown.model_dump(),
        "failback_after": pool.failback_after,
        "probe_timeout": pool.probe_timeout,
        "rotate_for": pool.rotate_for,
    }


def pool_config_text(pool: PoolConfig) -> list[str]:
    cd = pool.cooldown
    lines = [
        f"pool {pool.name}: {pool.strategy}, {len(pool.members)} members; cooldowns "
        f"rate_limited {span(cd.rate_limited)}, quota_exhausted {span(cd.quota_exhausted)}, "
        f"auth {span(cd.auth)}, transient {span(cd.transient)} (after {cd.transient_threshold}), "
        f"max {span(cd.max)}; rotate_for {span(pool.rotate_for)}"
    ]
    for i, member in enumerate(pool.members):
        source = credential_source(member)
        extras = [{"env": f"key from ${source['env']}", "config": "key in config file", "none": "no key"}[
            source["source"]
        ]]
        if member.model:
            extras.append(f"model {member.model}")
        if member.base_url:
            extras.append(f"base_url {safe_url(member.base_url)}")
        if member.weight != 1:
            extras.append(f"weight {member.weight}")
        lines.append(f"  {i + 1}. {member.id:<16} {', '.join(extras)}")
    return lines


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


def _rich_console() -> Any:
    try:
        from rich.console import Console
    except ImportError:
        raise CliError(RICH_HINT) from None
    # A pipe or a log has no width; rich would assume 80 columns and fold reasons mid-word.
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    return Console(highlight=False, width=width)


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


def _status_view(snap: Snapshot, config: PoolConfig) -> list[Any]:
    """A header line, the member table and notes; the header is not the table's title because rich
    wraps a title to the table's width."""
    from rich.table import Table
    from rich.text import Text

    header = Text(f"pool {snap.pool}", style="bold")
    header.append(f"  {snap.strategy}  active: {snap.active or '-'}  generation {snap.generation}")
    if snap.epoch:
        header.append(f"  epoch {snap.epoch}", style="dim")
    if snap.exhausted:
        header.append("  EXHAUSTED: every member is cooling or parked", style="bold red")
    notes = []
    if snap.epoch is None:
        notes.append("no state in Redis yet: nothing has happened to this pool")
    if snap.skipped_until is not None:
        notes.append(f"model unavailable: the pool is skipped until {until_cell(snap.skipped_until, snap.now)}")
    if snap.probe_member:
        notes.append(f"probing {snap.probe_member} (half-open)")
    mismatch = drift(snap, config)
    if mismatch:
        notes.append(f"warning: {mismatch}")
    table = Table()
    table.add_column("", width=1, no_wrap=True)
    table.add_column("member", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("until", no_wrap=True)
    table.add_column("reason")
    table.add_column("failures", justify="right")
    table.add_column("ejections", justify="right")
    colours = {"ready": "green", "cooling": "yellow", "parked": "red"}
    for m in snap.members:
        state = member_state(m)
        if state == "parked":
            until, reason = until_cell(m.parked_until, snap.now), m.reason
        elif state == "cooling":
            until, reason = until_cell(m.cooling_until, snap.now), m.cooling_kind
        else:
            until, reason = "", ""
        table.add_row(
            "*" if m.id == snap.active else "",
            Text(m.id, style="bold" if m.id == snap.active else ""),
            Text(state, style=colours[state]),
            until,
            reason,
            str(m.failures),
            str(m.ejections),
        )
    return [header, table, *(Text(note, style="dim") for note in notes)]


def until_cell(stamp: float | None, now: float) -> str:
    if stamp is None:
        return ""
    if math.isinf(stamp):
        return "until unparked"
    return f"{clock(stamp, now)} ({span(stamp - now)} left)"


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
    history: list[FailoverEvent] = []
    cursors: dict[str, str] = {}
    for pool in pools:
        # At least one entry even for --limit 0: the newest id is where --follow starts reading.
        batch = pool.events(limit=max(args.limit, 1), since=since)
        cursors[pool.name] = batch[-1].id if batch else (f"{math.ceil(since * 1000)}-0" if since else "0-0")
        history.extend(batch)
    history.sort(key=_stream_order)
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


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"must be between 1 and 256, not {value}")
    return value


def positive_duration(text: str) -> float:
    seconds = duration_arg(text)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be longer than zero: {text!r}")
    return seconds


@command(
    "demo",
    "watch a fleet fail over: workers, a fake upstream, a live view and a summary",
    arg("--workers", type=positive_int, default=8, metavar="N", help="workers in the fleet (default: 8)"),
    arg("--duration", type=positive_duration, default=None, metavar="DURATION",
        help="how long the fleet runs (default: 10s; with --worker: until interrupted)"),
    arg("--worker", action="store_true",
        help="run one worker of a compose fleet on the config's first pool (needs --upstream)"),
    arg("--upstream", metavar="URL", help="with --worker: the fake upstream to call"),
    description="Starts a fake OpenAI-compatible upstream on loopback whose first account is out of quota, "
    "whose second starts answering 429 a third of the way in, and whose third is healthy, then runs a "
    "fleet of workers through the transport. On the embedded default (memory://) the workers are threads; "
    "with --redis URL they are OS processes sharing that Redis. Exit code 0 when no caller saw an error "
    "and every transition wrote exactly one event.",
)
def demo(session: Session) -> int:
    from ._demo import run_demo, run_worker_forever

    args = session.args
    if args.worker:
        if not args.upstream:
            raise CliError("demo --worker needs --upstream URL (the fake upstream the worker calls)")
        config = session.config
        if not config.pools:
            raise CliError(f"{args.config} defines no pools")
        return run_worker_forever(list(config.pools.values()), session.url, config.redis.prefix, args.upstream,
                                  args.duration, print)
    duration = args.duration if args.duration is not None else 10.0
    url = args.redis or os.environ.get(REDIS_URL_ENV) or None
    if url is not None and parse_url(url).kind == "memory":
        url = None
    live = None if session.json or not sys.stdout.isatty() else _DemoView()
    try:
        result = run_demo(url=url, workers=args.workers, duration=duration,
                          on_tick=live.update if live is not None else None)
    finally:
        if live is not None:
            live.stop()
    summary = {**result.__dict__, "ok": result.ok}
    if session.json:
        session.print_json(summary)
    else:
        print(_demo_summary(result))
    return EXIT_OK if result.ok else 1


def _demo_summary(r: Any) -> str:
    verdict = "OK" if r.ok else "PROBLEM"
    lines = [
        f"demo {verdict}: {r.workers} workers on {r.store}, {r.duration:.1f}s",
        f"  requests            {r.requests} ({r.requests_per_second:.0f}/s)",
        f"  caller errors       {r.errors} (expected 0)",
        f"  transitions         {r.transition_events} (as seen by the one worker that won each)",
        f"  events              {r.events}: {', '.join(r.event_types) or '-'}",
        f"  reached a cooling member  {r.requests_to_cooling_member} "
        "(requests already in flight when the fleet learned of a cooldown)",
        "  upstream requests   " + ", ".join(f"{k} {v}" for k, v in sorted(r.upstream_requests.items())),
        f"  active now          {r.active}",
    ]
    lines += [f"  error: {sample}" for sample in r.error_samples]
    return "\n".join(lines)


class _DemoView:
    """The live view: requests per second, the active member and the cooling ones."""

    def __init__(self) -> None:
        from rich.live import Live

        self._console = _rich_console()
        self._live = Live(console=self._console, refresh_per_second=4, transient=False)
        self._live.start()

    def update(self, tick: dict[str, Any]) -> None:
        from rich.table import Table

        title = f"coordinator demo  {tick['elapsed']:.1f}s / {tick['duration']:.0f}s"
        table = Table(title=title, title_justify="left")
        for name in ("member", "state", "until"):
            table.add_column(name)
        for member_id, cooling_until, parked, kind in tick["members"]:
            if parked:
                state, until = "parked", ""
            elif cooling_until:
                state, until = f"cooling ({kind})", f"{span(cooling_until - tick['now'])} left"
            else:
                state, until = "ready", ""
            marker = "* " if member_id == tick["active"] else "  "
            table.add_row(marker + member_id, state, until)
        table.caption = (f"{tick['requests']} requests  {tick['rps']:.0f}/s  errors {tick['errors']}  "
                         f"generation {tick['generation']}")
        self._live.update(table)

    def stop(self) -> None:
        self._live.stop()


@command(
    "upstream",
    "run the fake OpenAI/Anthropic-compatible upstream (for the compose demo and local tests)",
    arg("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"),
    arg("--port", type=int, default=8080, help="port (default: 8080)"),
    arg("--switch-after", type=positive_duration, default=60.0, metavar="DURATION",
        help="when the demo's second account starts answering 429 (default: 60s)"),
    description="Serves POST /v1/chat/completions and /v1/messages. Accounts are told apart by their API key: "
    "sk-fake-acct-1 is out of quota, sk-fake-acct-2 answers 429 after --switch-after, sk-fake-acct-3 is "
    "healthy; any other key gets 401. Runs until interrupted.",
)
def upstream(session: Session) -> int:
    import time as _time

    from ._demo import scenario_accounts, start_scenario
    from ._upstream import FakeUpstream

    args = session.args
    try:
        server = FakeUpstream(scenario_accounts(), host=args.host, port=args.port)
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    with server:
        start_scenario(server, args.switch_after)
        print(f"fake upstream listening on {server.url}", flush=True)
        while True:
            _time.sleep(3600)


# -- observe: alerts and metrics ---------------------------------------------------------------------
# Only argument parsing lives here; each command's logic is in coordinator/observe (alerts.py,
# exporter.py). This block moves as one piece when the CLI is split.


@command(
    "alerts",
    "POST every transition to a webhook, once fleet-wide, from any number of replicas",
    arg("--webhook", metavar="URL", help="where to POST (never printed: output shows scheme://host/*** only)"),
    arg("--format", choices=["json", "slack"], default="json",
        help="json: the event as 'events --json' prints it; slack: a readable {\"text\": ...} message"),
    arg("--group", default="alerts", help="consumer group shared by the replicas (default: alerts)"),
    arg("--name", metavar="NAME", help="this replica's consumer name (default: host-pid)"),
    arg("--from-start", action="store_true",
        help="a new group starts at the oldest kept event, not at the newest (no effect once it exists)"),
    arg("--claim-after", type=duration_arg, default=30.0, metavar="DURATION",
        help="take over another replica's entries unacknowledged this long (default: 30s)"),
    arg("--retry-max", type=duration_arg, default=30.0, metavar="DURATION",
        help="longest pause between two tries of one delivery (default: 30s)"),
    arg("--timeout", type=duration_arg, default=10.0, metavar="DURATION",
        help="how long one webhook request may take (default: 10s)"),
    arg("--status", action="store_true", help="print the group's state (pending, unread, replicas) and exit"),
    description="Reads every pool's event stream through a Redis consumer group and POSTs each transition to "
    "--webhook with an Idempotency-Key header (<prefix>:<pool>:<event id>). Run several replicas with the same "
    "--group: each event is delivered once; only a delivery in flight when a replica dies may be repeated, "
    "with the same key. Failed deliveries are retried with backoff until the webhook answers 2xx. Runs until "
    "SIGTERM or Ctrl-C (exit 0); --json prints one JSON object per line.",
)
def alerts(session: Session) -> int:
    from .observe.alerts import AlertOptions, alert_status, run_alerts, status_text

    args = session.args
    if args.status:
        state = alert_status(session.config, session.url, args.group)
        print(dump_json(state) if session.json else status_text(state), flush=True)
        return EXIT_OK
    if not args.webhook:
        raise CliError("alerts needs --webhook URL (or --status to show the group's state)")
    named = {"consumer": args.name} if args.name else {}
    options = AlertOptions(webhook=args.webhook, format=args.format, group=args.group, from_start=args.from_start,
                           claim_after=args.claim_after, retry_max=args.retry_max, timeout=args.timeout, **named)
    return run_alerts(session.config, session.url, options, json_lines=session.json,
                      out=lambda line: print(line, flush=True))


def port_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 0 and 65535, not {value}")
    return value


@command(
    "metrics",
    "serve the fleet's state as Prometheus metrics on /metrics (needs coordinator[prometheus])",
    arg("--port", type=port_arg, default=9464, help="port to listen on (default: 9464)"),
    arg("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; 0.0.0.0 in a container)"),
    description="A fleet-level exporter: at every scrape it reads each pool's state from Redis and serves "
    "per-member state, seconds until recovery, each pool's generation and exhausted flag. Run one per fleet; "
    "workers count their own calls with co.PrometheusHook. Runs until SIGTERM or Ctrl-C (exit 0).",
)
def metrics(session: Session) -> int:
    try:
        from .observe.exporter import run_metrics
    except ImportError:
        raise CliError("the exporter needs prometheus_client: pip install 'coordinator[prometheus]'") from None
    args = session.args
    return run_metrics(session.config, session.url, port=args.port, host=args.host,
                       out=lambda line: print(line, flush=True))

# -- end of observe ----------------------------------------------------------------------------------


# -- entry point -------------------------------------------------------------------------------------


def _exit_code(code: object) -> int:
    if code is None:
        return EXIT_OK
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI and returns its exit code (it never calls ``sys.exit`` itself)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, and usage errors (already printed)
        return _exit_code(exc.code)
    session = Session(args)
    try:
        return int(args.handler(session))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (e.g. `| head`) is gone; stop quietly instead of a traceback at shutdown.
        _silence_stdout()
        return EXIT_OK
    except (CliError, CoordinatorError, redis.RedisError, RedisClusterException) as exc:
        return session.fail(exc)
    finally:
        session.close()


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; pointing it at /dev/null keeps that from raising too.
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
