"""How the CLI shows state: text and ``--json`` shapes (documented in the README, Operator guide).

Times are unix seconds plus an ISO 8601 UTC string; a park "until unparked" is ``until: null`` with
``forever: true``, never Infinity.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import sys
import unicodedata
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

from coordinator import (
    CoordinatorError,
    FailoverEvent,
    Member,
    MemberState,
    PoolConfig,
    Snapshot,
)
from coordinator.cli.registry import (
    RICH_HINT,
    CliError,
)
from coordinator.observe.webhook import finite, iso
from coordinator.store.connect import parse_url, redact

# -- formatting --------------------------------------------------------------------------------------


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
    """One line of printable text: control characters (escape sequences) become spaces, runs of space one."""
    return " ".join("".join(" " if _is_control(ch) else ch for ch in text).split())


def shown(text: str) -> str:
    """Text from Redis as a terminal may print it: control characters (escape sequences, bidi overrides)
    written by anyone who could write the pool, say an older worker, appear escaped, never raw."""
    return "".join(ch.encode("unicode_escape").decode("ascii") if _is_control(ch) else ch for ch in text)


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc" or "\u202a" <= ch <= "\u202e" or "\u2066" <= ch <= "\u2069"


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
        "healed_at": snap.healed_at,
        "healed_at_iso": iso(snap.healed_at),
        "healed_reason": snap.healed_reason,
        "members": members,
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
        details.append(f"reason: {shown(event.reason)}")
    stamp = datetime.fromtimestamp(event.time).astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return f"{stamp}  {event.pool}  gen {event.generation:<4} {event.type:<12} {'  '.join(details)}".rstrip()


def in_order(histories: Sequence[Sequence[FailoverEvent]]) -> list[FailoverEvent]:
    """The events of several pools, each list in its pool's stream order, in the order they happened
    (docs/design.md, "Event order").

    A pool's own order is its stream's and is kept as it is. Pools are interleaved by the server
    clock the writing script read (``time_us``): scripts on one Redis server run one at a time, so
    that is the order they ran in (unless the server's clock was stepped back between them). Entries
    older versions wrote carry only their id's millisecond; on a tie the pool listed first goes first.
    """
    return list(heapq.merge(*histories, key=_when))


def _when(event: FailoverEvent) -> int:
    if event.time_us is not None:
        return event.time_us
    return int(event.id.partition("-")[0]) * 1000


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


def _rich_console() -> Any:
    try:
        from rich.console import Console
    except ImportError:
        raise CliError(RICH_HINT) from None
    # A pipe or a log has no width; rich would assume 80 columns and fold reasons mid-word.
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    return Console(highlight=False, width=width)


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
    if snap.healed_at is not None:
        notes.append(f"healed automatically at {iso(snap.healed_at)}: {snap.healed_reason} (reset() starts afresh)")
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
            until, reason = until_cell(m.parked_until, snap.now), shown(m.reason)
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


