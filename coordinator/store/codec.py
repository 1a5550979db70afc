"""Sans-IO core of the store: what to send to each script and what its reply means.

The sync and async drivers (``_pool.py``) only move bytes: they ask a ``PoolCodec`` for an
``Op``, run its script, and hand the decoded reply back to ``Op.parse``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, get_args

from coordinator.core.config import PoolConfig
from coordinator.core.errors import (
    CoordinatorError,
    CorruptStateError,
    PoolExhaustedError,
    StoreError,
    UnknownMemberError,
)
from coordinator.core.kinds import COOLING_KINDS, FailureKind
from coordinator.core.types import (
    FailoverEvent,
    FailureResult,
    MemberState,
    ParkResult,
    Result,
    Selection,
    Snapshot,
    SuccessResult,
    ms_to_seconds,
)
from coordinator.rules.view import DEFAULT_STALENESS, AcquireDecision, PoolView
from coordinator.store.membership import within_fleet
from coordinator.store.schema import KeySchema

T = TypeVar("T")

#: Event retention per pool (docs/design.md, "Events"): at most this many entries (approximately: Redis
#: trims whole macro nodes) and none older than DEFAULT_STREAM_MAX_AGE seconds. An entry of a typical
#: failover entry takes about 115 bytes of stream memory, so the count bounds a pool's stream near 120 KB.
DEFAULT_STREAM_MAXLEN = 1_000
DEFAULT_STREAM_MAX_AGE = 7 * 86400.0
#: How long before a member's last counted failure a reporter's success still restarts the count
#: (docs/design.md, "Failure counts"), seconds.
FAILURE_RESET_GRACE = 10.0
_STREAM_ID_RE = re.compile(r"^\d+(-\d+)?$")
_DIGITS_RE = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True)
class Op(Generic[T]):
    """One script call: its name, KEYS, script-specific ARGV (after the common six), reply parser."""

    script: str
    keys: list[str]
    args: list[str]
    parse: Callable[[dict[str, Any]], T]
    #: An operator's action: refused, never served locally, while Redis is unreachable.
    operator: bool = False
    #: A read for someone who wants the truth (status, the exporter, the caller's ``snapshot()``): a
    #: corrupt state that cannot be healed is reported, not served from the stand-in (docs/design.md,
    #: "Corrupt state"). A call's own reads are served like the call.
    reports_corruption: bool = False


def _ms(seconds: float) -> str:
    return str(round(seconds * 1000))


def _microseconds(value: Any) -> int | None:
    """An event's ``time_us`` field; None when absent (older versions) or not a plain integer."""
    if isinstance(value, str) and _DIGITS_RE.fullmatch(value):
        return int(value)
    return None


def _collect_entries(value: Any, out: list[tuple[Any, Any]]) -> None:
    # redis-py nests RESP3 XREAD entries one list deeper than RESP2; an entry is an (id, fields) pair.
    if isinstance(value, list | tuple):
        if len(value) == 2 and isinstance(value[0], str | bytes) and isinstance(value[1], dict | None):
            out.append((value[0], value[1]))
            return
        for item in value:
            _collect_entries(item, out)


def _is_control(ch: str) -> bool:
    return unicodedata.category(ch) == "Cc" or "\u202a" <= ch <= "\u202e" or "\u2066" <= ch <= "\u2069"


def _nonce() -> str:
    return os.urandom(8).hex()


def _events(data: dict[str, Any]) -> tuple[str, ...]:
    text = data.get("events") or ""
    return tuple(text.split(",")) if text else ()


def decode_version(reply: Any) -> tuple[str, int] | None:
    """The safety re-read's ``HMGET epoch version`` reply (docs/design.md, "The local view"): the
    pool's epoch and version, or None when the pool has no readable state."""
    epoch, version = (v.decode() if isinstance(v, bytes) else v for v in reply)
    if epoch and isinstance(version, str) and version.isdigit():
        return str(epoch), int(version)
    return None


def decode_acquire(data: dict[str, Any]) -> AcquireDecision:
    """An acquire reply (lua/acquire.lua's header) as the local view reuses it."""
    rotation = str(data.get("rotation") or "")
    ids = tuple(member_id for item in rotation.split(",") for member_id, _, weight in [item.partition(":")]
                for _ in range(int(weight or 1))) if rotation else (str(data.get("member") or ""),)
    dirty = frozenset(filter(None, str(data.get("dirty") or "").split(",")))
    epoch, active = str(data["epoch"]), data.get("active") or None
    return AcquireDecision(epoch, int(data["generation"]), int(data["version"]), active,
                           ids, dirty, float(data.get("now", 0)), float(data.get("valid_until") or 0),
                           not data.get("degraded") and not data.get("lease"))


class PoolCodec:
    """Builds script calls for one pool and interprets their replies. Does no I/O."""

    def __init__(
        self,
        config: PoolConfig,
        keys: KeySchema,
        stream_maxlen: int = DEFAULT_STREAM_MAXLEN,
        staleness: float = DEFAULT_STALENESS,
        clock: Callable[[], float] = time.monotonic,
        stream_max_age: float | None = DEFAULT_STREAM_MAX_AGE,
    ):
        self.config = config
        self.name = config.name
        self.keys = keys
        self._keys = keys.pool_keys(config.name)
        self._members = {m.id: m for m in config.members}
        spec = {
            "strategy": config.strategy,
            "members": [m.id for m in config.members],
            "weights": [m.weight for m in config.members],
        }
        self.spec_json = json.dumps(spec, separators=(",", ":"), sort_keys=True)
        # The digest names the membership alone: a revision decides between two memberships.
        self.digest = hashlib.sha1(self.spec_json.encode()).hexdigest()[:16]
        if config.revision:
            self.spec_json = json.dumps({**spec, "revision": config.revision}, separators=(",", ":"), sort_keys=True)
        self.stream_maxlen = str(stream_maxlen) if stream_max_age is None else f"{stream_maxlen} {_ms(stream_max_age)}"
        #: The scripts' ARGV[1]: where change notices go (the coordinator sets it once it knows the client).
        self.channels = keys.notice_targets(config.name, sharded=False, legacy=True)
        self._wire = (self.name.encode(), self.digest.encode(), self.spec_json.encode(), self.stream_maxlen.encode())
        self.clock = clock
        self.view = PoolView(config.name, self._members, staleness)
        self._acquire_limits = (_ms(config.probe_timeout), _ms(config.failback_after))

    # -- the common ARGV -------------------------------------------------------------------------

    def argv(self, op: Op[Any], with_spec: bool) -> list[str | bytes]:
        """ARGV: the common six (the fixed ones as the bytes redis-py would send), then the script's own."""
        name, digest, spec, maxlen = self._wire
        return [self.channels.encode(), name, b"*" if op.script == "snapshot" else digest, spec if with_spec else b"",
                _nonce(), maxlen, *op.args]

    @staticmethod
    def needs_spec(data: dict[str, Any]) -> bool:
        return bool(data.get("need_spec"))

    def decode(self, raw: Any) -> dict[str, Any]:
        try:
            data = json.loads(raw)  # bytes as they came (UTF-8), or a str from a decoding client
        except (TypeError, ValueError) as exc:
            raise CorruptStateError(f"pool {self.name!r}: unreadable script reply {raw!r}") from exc
        if not isinstance(data, dict):
            raise CorruptStateError(f"pool {self.name!r}: unexpected script reply {raw!r}")
        return data

    def translate_error(self, message: str) -> CoordinatorError | None:
        """Maps a script's error reply to our exception; None when it is not one of ours."""
        code, _, detail = message.partition(" ")
        if code == "COORD_CORRUPT":
            return CorruptStateError(f"pool {self.name!r}: corrupt state: {detail}; nothing was written")
        if code == "COORD_UNKNOWN_MEMBER":
            if detail in self._members:
                # The worker's config has it and its digest matched: the stored list was altered.
                return CorruptStateError(
                    f"pool {self.name!r}: corrupt state: {self.keys.pool(self.name)} field members lacks "
                    f"configured member {detail!r}; nothing was written"
                )
            return UnknownMemberError(self.name, detail)
        if code == "COORD_BAD_ARGUMENT":
            return CoordinatorError(f"pool {self.name!r}: {detail}")
        if code == "COORD_NOPERM":
            # Redis appends " script: <sha>, on @user_script:<line>." to errors raised in a script.
            return StoreError(f"pool {self.name!r}: {detail.split(' script: ')[0]}")
        if code == "WRONGTYPE":
            # Only the plain stream reads (events) can meet it: every script checks TYPE first.
            return CorruptStateError(
                f"pool {self.name!r}: corrupt state: {self.events_key} is not a stream; nothing was written"
            )
        return None

    def member_id(self, member_id: str) -> str:
        if member_id not in self._members:
            raise UnknownMemberError(self.name, member_id)
        return member_id

    def _common(self, data: dict[str, Any]) -> dict[str, Any]:
        self.check_known(data)
        return {
            "pool": self.name,
            "transitioned": bool(data.get("transitioned")),
            "active": data.get("active") or None,
            "epoch": str(data.get("epoch", "")),
            "generation": int(data.get("generation", 0)),
            "exhausted": bool(data.get("exhausted")),
            "events": _events(data),
            "now": float(data.get("now", 0)) / 1000.0,
        }

    # -- operations ------------------------------------------------------------------------------

    def local_acquire(self) -> Selection | None:
        """A selection decided without Redis from the view, or None: run ``acquire()``."""
        return self.view.selection(self.clock())

    def acquire(self, recovery_probe: bool = False) -> Op[Selection]:
        args = [_nonce(), *self._acquire_limits, "1" if recovery_probe else ""]
        return Op("acquire", self._keys, args, self._parse_acquire)

    def _parse_acquire(self, data: dict[str, Any]) -> Selection:
        if data.get("foreign"):
            data = within_fleet(self.name, self._members, data)
        self.check_known(data)
        self.view.learn_acquire(decode_acquire(data), self.clock())
        member_id = data.get("member") or ""
        if not member_id:
            raise PoolExhaustedError(
                self.name, None, f"pool {self.name!r}: every member is parked until an operator unparks it"
            )
        retry_at = data.get("retry_at", -1)
        return Selection(
            pool=self.name,
            member=self._members[member_id],
            epoch=str(data["epoch"]),
            generation=int(data["generation"]),
            degraded=bool(data.get("degraded")),
            retry_at=float(retry_at) / 1000.0 if retry_at and retry_at > 0 else None,
            lease=data.get("lease") or "",
            probing=bool(data.get("probing")),
            transitioned=bool(data.get("transitioned")),
            events=_events(data),
            now=float(data.get("now", 0)) / 1000.0,
        )

    def report_failure(self, selection: Selection, kind: str, retry_after: float | None) -> Op[FailureResult]:
        if kind in get_args(FailureKind) and kind not in COOLING_KINDS:
            raise ValueError(f"failure kind {kind!r} never changes pool state; do not report it")
        if kind not in COOLING_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}; expected one of {sorted(COOLING_KINDS)}")
        self._check_selection(selection)
        policy = self.config.cooldown
        hint = "-1"
        if retry_after is not None and math.isfinite(retry_after) and retry_after >= 0:
            hint = _ms(min(retry_after, 10 * 365 * 86400.0))
        threshold = policy.transient_threshold if kind == "transient" else 1
        args = [
            selection.member.id,
            selection.epoch,
            str(selection.generation),
            kind,
            hint,
            _ms(policy.base_for(kind)),
            _ms(policy.min),
            _ms(policy.max_for(kind, probe=bool(selection.lease) and hint == "-1")),
            repr(float(policy.multiplier)),
            str(threshold),
            selection.lease,
            _ms(self.view.take_served(selection.member.id)),
            _ms(FAILURE_RESET_GRACE),
        ]
        return Op("report_failure", self._keys, args, self._parse_failure)

    def _parse_failure(self, data: dict[str, Any]) -> FailureResult:
        # A failure that was only counted changed no decision (its reply shows the same version): the
        # view stays. Anything else may have moved the pointer: the next acquire asks Redis.
        self.view.observe(data)
        if not data.get("counted"):
            self.view.forget()
        return FailureResult(
            **self._common(data),
            stale=bool(data.get("stale")),
            cooled=bool(data.get("cooled")),
            cooling_until=ms_to_seconds(data.get("until")),
            failures=int(data.get("failures", 0)),
        )

    def local_success(self, selection: Selection) -> SuccessResult | None:
        """The result of a success that, as far as the view knows, would change nothing in Redis;
        None when it must be reported (``report_success()``)."""
        self._check_selection(selection)
        now = self.clock()
        self.view.note_success(selection.member.id, now, selection)
        quiet = self.view.quiet_success(selection, now)
        return None if quiet is None else self._parse_success(quiet)

    def report_success(self, selection: Selection) -> Op[SuccessResult]:
        """The report of a success ``local_success`` found to be news (it already noted the success)."""
        self._check_selection(selection)
        args = [selection.member.id, selection.epoch, str(selection.generation), selection.lease]
        return Op("report_success", self._keys, args, lambda data: self._parse_success(data, selection))

    def _parse_success(self, data: dict[str, Any], selection: Selection | None = None) -> SuccessResult:
        self.view.observe(data)
        result = SuccessResult(**self._common(data), reset=bool(data.get("reset")))
        if selection is not None and result.transitioned:
            # This success moved the pool on (a probe passed, a failback): its token is the one the
            # attempt's member is used under now, for a stream whose hand-over it was to report a break.
            self.view.note_moved(selection.member.id, selection, result.epoch, result.generation)
        return result

    def park(self, member_id: str, seconds: float | None, reason: str) -> Op[ParkResult]:
        self.member_id(member_id)
        args = [member_id, self._duration(seconds), self._reason(reason)]
        return Op("park", self._keys, args, lambda data: self._parse_park(data, member_id), operator=True)

    def unpark(self, member_id: str) -> Op[ParkResult]:
        self.member_id(member_id)
        return Op("unpark", self._keys, [member_id], lambda data: self._parse_park(data, member_id), operator=True)

    def rotate(self, seconds: float | None, reason: str) -> Op[ParkResult]:
        if self.config.strategy == "round_robin":
            raise CoordinatorError(f"pool {self.name!r}: rotate needs an active member; round_robin has none")
        duration = self.config.rotate_for if seconds is None else seconds
        args = [self._duration(duration), self._reason(reason)]
        return Op("rotate", self._keys, args, lambda data: self._parse_park(data, data.get("member", "")),
                  operator=True)

    def _parse_park(self, data: dict[str, Any], member_id: str) -> ParkResult:
        self.view.observe(data)
        return ParkResult(
            **self._common(data), member=member_id, parked_until=ms_to_seconds(data.get("parked_until"))
        )

    def merge(self, items: list[list[Any]], reason: str = "") -> Op[dict[str, Any]]:
        """After an outage or a lost state: ``items`` as merge.lua takes them ([member, remaining ms,
        kind, ejections, remaining park ms, park reason]), merged with ``max()``."""
        return Op("merge", self._keys, [json.dumps(items), "", reason], self._parse_merge)

    def heal(self, read_only: bool = False) -> Op[dict[str, Any]]:
        """heal.lua: a corrupt state rebuilt (nothing when sound); a ``read_only`` caller heals only under
        the stored membership (docs/design.md, "Corrupt state")."""
        return Op("heal", self._keys, ["read" if read_only else "", ",".join(sorted(COOLING_KINDS))],
                  self._parse_merge)

    def release(self, selection: Selection) -> Op[dict[str, Any]]:
        """Gives back the probe lease ``selection`` holds (a call cancelled before it could report)."""
        self._check_selection(selection)
        return Op("merge", self._keys, ["[]", selection.lease], self._parse_merge)

    def _parse_merge(self, data: dict[str, Any]) -> dict[str, Any]:
        self.view.observe(data)
        return data

    def reset(self, reason: str) -> Op[Result]:
        return Op("reset", self._keys, [self._reason(reason)], self._parse_reset, operator=True)

    def _parse_reset(self, data: dict[str, Any]) -> Result:
        # A new epoch: no decision of the old one may be reused.
        self.view.observe(data)
        self.view.forget()
        return Result(**self._common(data))

    def snapshot(self, reports_corruption: bool = True) -> Op[Snapshot]:
        return Op("snapshot", self._keys, [], self._parse_snapshot, reports_corruption=reports_corruption)

    def _parse_snapshot(self, data: dict[str, Any]) -> Snapshot:
        now_ms = float(data.get("now", 0))
        if data.get("missing"):
            # Nothing happened to this pool yet: what the first acquire will create.
            return Snapshot(
                pool=self.name,
                epoch=None,
                generation=0,
                version=0,
                active=None if self.config.strategy == "round_robin" else self.config.members[0].id,
                exhausted=False,
                strategy=self.config.strategy,
                now=now_ms / 1000.0,
                members=tuple(
                    MemberState(id=m.id, position=i, weight=m.weight) for i, m in enumerate(self.config.members)
                ),
            )
        members = []
        for i, item in enumerate(data.get("members") or []):
            cooling = float(item.get("cooling_until", 0))
            parked = float(item.get("parked_until", 0))
            parked_now = parked == -1 or parked > now_ms
            members.append(
                MemberState(
                    id=item["id"],
                    position=i,
                    weight=int(item.get("weight", 1)),
                    cooling_until=cooling / 1000.0 if cooling > now_ms else None,
                    cooling_kind=item.get("cooling_kind") or "",
                    failures=int(item.get("failures", 0)),
                    ejections=int(item.get("ejections", 0)),
                    parked=parked_now,
                    parked_until=ms_to_seconds(parked) if parked_now else None,
                    reason=(item.get("park_reason") or "") if parked_now else "",
                )
            )
        skip = float(data.get("skip_until", 0))
        healed_ms, _, healed_reason = str(data.get("healed") or "").partition(" ")
        return Snapshot(
            pool=self.name,
            epoch=str(data["epoch"]),
            generation=int(data["generation"]),
            version=int(data["version"]),
            active=data.get("active") or None,
            exhausted=bool(data.get("exhausted")),
            strategy=str(data.get("strategy", "")),
            now=now_ms / 1000.0,
            members=tuple(members),
            probe_member=data.get("probe_member") or None,
            skipped_until=skip / 1000.0 if skip > now_ms else None,
            healed_at=int(healed_ms) / 1000.0 if healed_ms.isdigit() else None,
            healed_reason=self._reason(healed_reason),
        )

    # -- events (plain XREVRANGE / XREAD, no script) -----------------------------------------------

    @property
    def events_key(self) -> str:
        return self._keys[1]

    @staticmethod
    def since_id(since: float | None) -> str:
        """The XRANGE bound for events at or after ``since`` (unix seconds); ``-`` for no bound."""
        if since is None:
            return "-"
        if isinstance(since, bool) or not isinstance(since, int | float) or not math.isfinite(since) or since < 0:
            raise ValueError(f"since must be unix seconds (a finite number, not negative), not {since!r}")
        # Entry ids are integer server milliseconds: the first one at or after `since` is its ceiling.
        return f"{math.ceil(since * 1000)}-0"

    def xread_args(self, last_id: str, block: float | None, count: int) -> dict[str, Any]:
        """Keyword arguments of redis-py's ``xread`` for the events written after entry ``last_id``.

        ``last_id`` is a ``FailoverEvent.id``, ``0-0`` for the whole stream or ``$`` for only new
        entries. ``block`` is seconds; None or 0 does not wait (XREAD's BLOCK 0 would wait forever,
        past any socket timeout).
        """
        if not isinstance(last_id, str) or (last_id != "$" and not _STREAM_ID_RE.match(last_id)):
            raise ValueError(f"last_id must be an event id such as '1700000000000-0', '0-0' or '$', not {last_id!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"count must be a positive integer, not {count!r}")
        block_ms: int | None = None
        if block is not None:
            if isinstance(block, bool) or not isinstance(block, int | float) or not math.isfinite(block) or block < 0:
                raise ValueError(f"block must be seconds (finite, not negative) or None, not {block!r}")
            block_ms = max(1, round(block * 1000)) if block > 0 else None
        return {"streams": {self.events_key: last_id}, "count": count, "block": block_ms}

    def parse_xread(self, reply: Any) -> list[FailoverEvent]:
        """An XREAD reply on this pool's stream, RESP2 (``[[key, entries]]``) or RESP3 (``{key: ...}``)."""
        if not reply:
            return []
        if isinstance(reply, dict):
            streams: list[Any] = list(reply.values())
        else:
            streams = [item[1] for item in reply]
        entries: list[tuple[Any, Any]] = []
        for stream in streams:
            _collect_entries(stream, entries)
        return self.parse_events(entries)

    def parse_events(self, entries: Sequence[tuple[Any, Any]]) -> list[FailoverEvent]:
        """Stream entries (any order given by the caller) to events; foreign entries are reported."""
        events = []
        for entry_id, fields in entries:
            entry_id = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            f = {
                (k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                for k, v in (fields or {}).items()
            }
            try:
                generation = int(f["generation"])
                kind = f["type"]
                epoch = f["epoch"]
                # Our entries get ids from XADD *: server milliseconds, 13 digits until the year 2286.
                if not _STREAM_ID_RE.match(entry_id) or len(entry_id.split("-")[0]) > 13:
                    raise ValueError(entry_id)
            except (KeyError, ValueError) as exc:
                raise CorruptStateError(
                    f"pool {self.name!r}: event stream {self.events_key} holds an entry {entry_id} "
                    "that coordinator did not write"
                ) from exc
            events.append(
                FailoverEvent(
                    id=entry_id,
                    pool=self.name,
                    type=kind,
                    time=int(entry_id.split("-")[0]) / 1000.0,
                    epoch=epoch,
                    generation=generation,
                    from_member=f.get("from"),
                    to_member=f.get("to"),
                    member=f.get("member"),
                    kind=f.get("kind"),
                    reason=f.get("reason"),
                    until=ms_to_seconds(f.get("until")),
                    retry_at=ms_to_seconds(f.get("retry_at")),
                    time_us=_microseconds(f.get("time_us")),
                )
            )
        return events

    # -- helpers ---------------------------------------------------------------------------------

    def check_known(self, data: dict[str, Any]) -> None:
        # Every script but snapshot runs under this worker's membership digest, so a reply can name a
        # member this worker does not know only when someone altered the stored members by hand, or when
        # it ran within another configuration's membership (docs/design.md, "Rolling deploys").
        if data.get("foreign"):
            return
        for name in ("member", "active"):
            member_id = data.get(name) or ""
            if member_id and member_id not in self._members:
                raise CorruptStateError(
                    f"pool {self.name!r}: corrupt state: {self.keys.pool(self.name)} field members names "
                    f"{member_id!r}, which is not in this worker's config; repair it with reset()"
                )

    def _check_selection(self, selection: Selection) -> None:
        if selection.pool != self.name:
            raise ValueError(f"selection is for pool {selection.pool!r}, not {self.name!r}")
        self.member_id(selection.member.id)

    @staticmethod
    def _duration(seconds: float | None) -> str:
        if seconds is None:
            return "-1"
        if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"park duration must be a positive number of seconds or None, not {seconds!r}")
        return _ms(seconds)

    @staticmethod
    def _reason(reason: str) -> str:
        # Shown in every operator's terminal: no escape sequences or bidi overrides, only printable text.
        text = " ".join("".join(" " if _is_control(ch) else ch for ch in str(reason)).split())
        return text[:200]


# -- what a worker knows of each member (the stand-in's seed, and what heals a lost state) -------------


@dataclass(frozen=True)
class MemberRecord:
    """One member's state as a script reply told it; times are server milliseconds."""

    id: str
    cooling_until: float = 0.0
    cooling_kind: str = ""
    failures: int = 0
    ejections: int = 0
    #: -1 until unparked, 0 not parked.
    parked_until: float = 0.0
    park_reason: str = ""


def decode_states(data: dict[str, Any]) -> dict[str, MemberRecord]:
    """An acquire reply's ``states``: positional lists as lua/acquire.lua spells them, decoded here
    only. Entries that do not decode are left out (what is known of the others still helps)."""
    found = {}
    for item in data.get("states") or []:
        try:
            member_id, cooling, kind, failures, ejections, parked, reason = item
            record = MemberRecord(str(member_id), float(cooling or 0), str(kind or ""), int(failures or 0),
                                  int(ejections or 0), float(parked or 0), str(reason or ""))
        except (TypeError, ValueError):
            continue
        found[record.id] = record
    return found
