"""Frozen records handed to users: selections, results, snapshots, events. Times are unix seconds."""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields

from coordinator.core.config import Member


@dataclass(frozen=True, kw_only=True)
class Selection:
    """What ``acquire`` returns: the member to use and the token it was chosen under."""

    pool: str
    member: Member
    epoch: str
    generation: int
    degraded: bool = False
    #: When the pool is exhausted: when ``member`` recovers (unix seconds).
    retry_at: float | None = None
    #: Non-empty when this caller holds the pool's probe lease: the half-open probe of the priority
    #: strategy, or the recovery probe of an exhausted pool.
    lease: str = ""
    #: The pool is exhausted, a member is back, and another caller holds its recovery probe (degraded).
    probing: bool = False
    #: True when this very acquire made a transition (e.g. ``recovered``).
    transitioned: bool = False
    events: tuple[str, ...] = ()
    #: Redis server time when the selection was made.
    now: float = 0.0

    @property
    def probe(self) -> bool:
        return bool(self.lease)

    @classmethod
    def _decided(cls, pool: str, member: Member, epoch: str, generation: int, now: float) -> Selection:
        """The local view's selection on every request (docs/design.md, "The local view"): equal to
        ``Selection(pool=..., member=..., epoch=..., generation=..., now=...)``, made without the frozen
        ``__init__``'s one ``object.__setattr__`` per field, a microsecond of every call's happy path."""
        selection = object.__new__(cls)
        selection.__dict__.update(_SELECTION_DEFAULTS, pool=pool, member=member, epoch=epoch, generation=generation,
                                  now=now)
        return selection

    def __repr__(self) -> str:
        flags = " degraded" if self.degraded else ""
        flags += " probe" if self.lease else ""
        return f"<Selection {self.pool}/{self.member.id} epoch={self.epoch} gen={self.generation}{flags}>"


#: What a ``Selection`` holds unless told otherwise (``Selection._decided``).
_SELECTION_DEFAULTS = {f.name: f.default for f in fields(Selection) if f.default is not MISSING}


@dataclass(frozen=True, kw_only=True)
class Result:
    """Common part of every state-changing reply."""

    pool: str
    #: True for exactly one caller per real transition, fleet-wide.
    transitioned: bool
    active: str | None
    epoch: str
    generation: int
    exhausted: bool
    #: Event types this call wrote to the stream, in order.
    events: tuple[str, ...] = ()
    now: float = 0.0


@dataclass(frozen=True, kw_only=True)
class FailureResult(Result):
    stale: bool = False
    cooled: bool = False
    #: The member's cooling deadline after this report (None when not cooling).
    cooling_until: float | None = None
    failures: int = 0


@dataclass(frozen=True, kw_only=True)
class SuccessResult(Result):
    reset: bool = False


@dataclass(frozen=True, kw_only=True)
class ParkResult(Result):
    member: str
    #: ``math.inf`` for a park until unparked; None after unpark.
    parked_until: float | None = None


@dataclass(frozen=True, kw_only=True)
class MemberState:
    id: str
    position: int
    weight: int = 1
    cooling_until: float | None = None
    cooling_kind: str = ""
    failures: int = 0
    ejections: int = 0
    parked: bool = False
    #: ``math.inf`` when parked until unparked.
    parked_until: float | None = None
    reason: str = ""

    @property
    def available(self) -> bool:
        return self.cooling_until is None and not self.parked

    @property
    def ready_at(self) -> float | None:
        """When the member can serve again; None when it can now."""
        times = [t for t in (self.cooling_until, self.parked_until if self.parked else None) if t]
        return max(times) if times else None


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    pool: str
    #: None when the pool has no state in Redis yet (nothing happened to it).
    epoch: str | None
    generation: int
    version: int
    active: str | None
    exhausted: bool
    strategy: str
    now: float
    members: tuple[MemberState, ...] = field(default_factory=tuple)
    #: The member currently probed under the half-open lease, if any.
    probe_member: str | None = None
    #: When the whole pool is skipped (model unavailable) until.
    skipped_until: float | None = None
    #: When the pool's state was last found corrupt and rebuilt automatically (unix seconds), and what
    #: was corrupt (docs/design.md, "Corrupt state"); None and "" when it never was since it was created.
    healed_at: float | None = None
    healed_reason: str = ""

    def member(self, member_id: str) -> MemberState:
        for state in self.members:
            if state.id == member_id:
                return state
        raise KeyError(member_id)


@dataclass(frozen=True, kw_only=True)
class FailoverEvent:
    """One entry of a pool's event stream: one real transition."""

    id: str
    pool: str
    type: str
    time: float
    epoch: str
    generation: int
    from_member: str | None = None
    to_member: str | None = None
    member: str | None = None
    kind: str | None = None
    reason: str | None = None
    #: Cooling or park deadline the event set (``math.inf`` for a park until unparked).
    until: float | None = None
    retry_at: float | None = None
    #: Redis server time in microseconds when the script that wrote the event ran: what orders the
    #: events of several pools (``id`` orders one pool's). None for entries of older versions.
    time_us: int | None = field(default=None, compare=False)


def ms_to_seconds(value: int | float | str | None) -> float | None:
    """Server milliseconds to unix seconds; None for absent/zero, inf for "forever" or -1."""
    if value is None or value == "" or value == 0:
        return None
    if value == "forever" or value == -1:
        return math.inf
    try:
        return float(value) / 1000.0
    except (TypeError, ValueError):
        return None
