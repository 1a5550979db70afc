"""The worker's local view of one pool: reuse the last acquire decision without asking Redis.

Sans-IO: every method takes the local monotonic time; nothing here touches the network.

An acquire reply says how long its decision holds by time alone (``valid_until``): a sticky pointer
only moves on a write, a priority pool may need a probe once a lower member recovers, a round-robin
rotation changes when a cooling member rejoins. Every write publishes a change notice with the pool's
new ``version``; a notice or reply that shows a newer version than the decision was made at drops it,
and a sticky pool's notice brings the new decision along.
How long a decision is reused depends on whether the worker hears the notices:

- while its subscription is healthy (``NoticeHealth.ok``: subscribed, and the listener's pings come
  back), a decision holds until a notice or reply outdates it, until its own ``valid_until``, and at
  most ``SAFETY_STALENESS`` seconds: a healthy fleet sends Redis nothing but real changes;
- otherwise (no listener yet, subscription lost, a coordinator without one) at most ``staleness``
  seconds, the coordinator's parameter, which so bounds the damage of notices missed while the
  subscription is down: at worst one request goes to a member that just cooled, and its failure
  report carries the old token, so it neither moves the pointer nor duplicates an event.

``staleness`` 0 never reuses a decision at all.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from coordinator.core.config import Member
from coordinator.core.types import Selection

DEFAULT_STALENESS = 1.0
#: The longest a decision is reused while notices are heard: a bound for what no health check can see
#: (a notice lost on a connection that still answers pings).
SAFETY_STALENESS = 300.0


@dataclass(frozen=True)
class AcquireDecision:
    """What an acquire reply decided, as the view reuses it; ``store/codec.py`` (``decode_acquire``) is
    the one decoder of the reply. Times are server milliseconds."""

    epoch: str
    generation: int
    version: int
    active: str | None
    #: The member to use, or a round-robin pool's rotation: member ids, each repeated per its weight.
    rotation: tuple[str, ...]
    #: Members whose successes must be reported.
    dirty: frozenset[str]
    now: float
    #: Until when the decision holds by time alone (0: never reuse it).
    valid_until: float
    #: False for a degraded answer or a probe lease: never reused.
    reusable: bool


class NoticeHealth:
    """Whether the coordinator's change-notice subscription is up; shared by its pools' views and set
    by the listener."""

    def __init__(self) -> None:
        self.ok = False


@dataclass
class _Decision:
    epoch: str
    generation: int
    version: int
    active: str | None
    #: Sticky/priority: the one member to use. Round robin: the weighted rotation.
    rotation: tuple[Member, ...]
    #: Members whose successes must be reported (non-zero failure or ejection counts).
    dirty: frozenset[str]
    #: Local monotonic seconds until which the decision may be reused while notices are heard.
    expires: float
    #: Local monotonic seconds until which it may be reused when they are not (``staleness``).
    expires_unheard: float
    #: Server time minus local monotonic time, seconds, as seen when the decision was fetched.
    clock_offset: float
    #: Local monotonic seconds of the reply's ``valid_until``: the most any re-read can extend it to.
    holds_until: float = float("inf")
    turn: Iterator[int] = field(default_factory=itertools.count)


@dataclass(slots=True)
class _Served:
    """One success noted on a member: when (server seconds), by which attempt, and what it replaced.
    Never changed once made (not frozen: one is made per success, on the happy path too)."""

    at: float
    attempt: object = None
    #: The note it replaced (itself without one), restored when this one is withdrawn.
    before: _Served | None = None


class PoolView:
    """Reusable acquire decisions for one pool, dropped by newer versions and by age."""

    def __init__(self, pool: str, members: dict[str, Member], staleness: float = DEFAULT_STALENESS,
                 health: NoticeHealth | None = None) -> None:
        self.pool = pool
        self._members = members
        self.staleness = staleness
        #: The subscription's health (a view without one never counts on notices).
        self.health = health if health is not None else NoticeHealth()
        self._decision: _Decision | None = None
        #: The newest (epoch, version) any notice or reply showed.
        self._seen: tuple[str, int] = ("", -1)
        #: Server time minus local monotonic time, from the last reply (None before any).
        self._offset: float | None = None
        self.hits = 0
        self.misses = 0
        #: Per member: server seconds of this worker's last success there since its last failure
        #: report there (docs/design.md, "Failure counts"); sent with the next failure report.
        self._served: dict[str, _Served] = {}
        #: Per member: the last success there that made a transition (a probe passed, a failback), as
        #: its attempt and the (epoch, generation) of its reply.
        self._moved: dict[str, tuple[object, str, int]] = {}

    # -- learning --------------------------------------------------------------------------------

    def learn_acquire(self, decided: AcquireDecision, now: float) -> None:
        """Keeps the decision of an acquire reply (decoded by ``store/codec.py``) if it may be reused."""
        epoch, version, server_now, valid_until = decided.epoch, decided.version, decided.now, decided.valid_until
        self.notice(epoch, version)
        self._offset = server_now / 1000.0 - now
        if self.staleness <= 0 or valid_until <= server_now or not decided.reusable:
            self._decision = None
            return
        if (epoch, version) != self._seen:
            self._decision = None  # a newer write was already announced
            return
        rotation = tuple(self._members[member_id] for member_id in decided.rotation)
        holds = (valid_until - server_now) / 1000.0
        self._decision = _Decision(epoch, decided.generation, version, decided.active, rotation, decided.dirty,
                                   now + min(SAFETY_STALENESS, holds), now + min(self.staleness, holds),
                                   server_now / 1000.0 - now, now + holds)

    def observe(self, data: dict[str, Any]) -> None:
        """Any script reply: remember its version; drop a decision it shows to be outdated."""
        if "version" in data and "epoch" in data:
            self.notice(str(data["epoch"]), int(data["version"]))

    def notice(self, epoch: str, version: int, hint: Any = None, now: float = 0.0) -> None:
        """A change notice (or reply) for this pool. ``hint``, from a sticky pool's notice, carries the
        decision itself (``active``, ``generation``, ``dirty``): taken at once, no round trip."""
        newer = epoch != self._seen[0] or version > self._seen[1]
        if newer:
            self._seen = (epoch, version)
        decision = self._decision
        if decision is not None and (epoch != decision.epoch or version > decision.version):
            self._decision = None
        active = getattr(hint, "active", None)
        if newer and active in self._members and self.staleness > 0 and self._offset is not None:
            self._decision = _Decision(epoch, int(hint.generation), version, active, (self._members[active],),
                                       frozenset(hint.dirty), now + SAFETY_STALENESS, now + self.staleness,
                                       self._offset)

    def note_success(self, member_id: str, now: float, attempt: object = None) -> None:
        """A request on ``member_id`` succeeded at local time ``now`` (reported or not). ``attempt``
        (the attempt's ``Selection`` object) names the success, so that ``withdraw_success`` can take
        back exactly it; a second note of the same attempt replaces its first."""
        if self._offset is None:
            return
        before = self._served.get(member_id)
        if before is not None and attempt is not None and before.attempt is attempt:
            before = before.before
        elif before is not None and before.before is not None:
            before = _Served(before.at, before.attempt)  # one level kept: nothing older is ever restored
        self._served[member_id] = _Served(now + self._offset, attempt, before)

    def withdraw_success(self, member_id: str, attempt: object) -> bool:
        """Takes back the success ``attempt`` noted on ``member_id`` (a stream whose hand-over was a
        success broke later), restoring what was noted there before it: only while it is the last
        success noted there (a later one is genuine, or taken back by its own attempt). True when it
        was taken back."""
        current = self._served.get(member_id)
        if current is None or attempt is None or current.attempt is not attempt:
            return False
        if current.before is None:
            del self._served[member_id]
        else:
            self._served[member_id] = current.before
        return True

    def note_moved(self, member_id: str, attempt: object, epoch: str, generation: int) -> None:
        """The success of ``attempt`` on ``member_id`` made a transition; its reply's token is kept."""
        self._moved[member_id] = (attempt, epoch, generation)

    def moved_token(self, member_id: str, attempt: object) -> tuple[str, int] | None:
        """The (epoch, generation) the success of ``attempt`` moved the pool to, when it made a
        transition and no later one on ``member_id`` did (None otherwise): a stream whose hand-over
        that success was reports its break under it, the token its member is used under since."""
        moved = self._moved.get(member_id)
        if moved is None or attempt is None or moved[0] is not attempt:
            return None
        return moved[1], moved[2]

    def take_served(self, member_id: str) -> float:
        """Server seconds of the last success on ``member_id`` since the last failure report there
        (0.0 when none), for the failure report being sent now; the next one starts afresh."""
        served = self._served.pop(member_id, None)
        return 0.0 if served is None else served.at

    def confirm(self, epoch: str, version: int, now: float) -> bool:
        """The safety re-read (the pool hash's ``epoch`` and ``version``): when they are still the
        decision's, it holds another ``SAFETY_STALENESS`` seconds and True is returned; else it is
        dropped (the next acquire asks Redis)."""
        decision = self._decision
        if decision is None:
            return False
        if epoch != decision.epoch or version != decision.version:
            self.notice(epoch, version)
            if self._decision is decision:
                self._decision = None
            return False
        decision.expires = min(now + SAFETY_STALENESS, decision.holds_until)
        return True

    def due(self, now: float, within: float) -> bool:
        """True when the decision is held while notices are heard but its safety bound ends within
        ``within`` seconds (and its own ``valid_until`` later): a re-read can extend it."""
        decision = self._decision
        return (decision is not None and self.health.ok and decision.expires - within <= now
                and now < decision.holds_until)

    def forget(self) -> None:
        """Drop the decision (e.g. after a failure report or a lost subscription)."""
        self._decision = None

    # -- using -----------------------------------------------------------------------------------

    def _current(self, now: float) -> _Decision | None:
        decision = self._decision
        if decision is None:
            return None
        if now >= (decision.expires if self.health.ok else decision.expires_unheard):
            # Lapsed by the safety bound alone: kept for the re-read (``due``, ``confirm``) to extend.
            lapsed = self.health.ok and now < decision.holds_until
            if self._decision is decision and not lapsed:  # not a newer one another thread just learned
                self._decision = None
            return None
        return decision

    def selection(self, now: float) -> Selection | None:
        """The member to use, decided locally, or None: ask Redis."""
        decision = self._current(now)
        if decision is None:
            self.misses += 1
            return None
        self.hits += 1
        rotation = decision.rotation
        member = rotation[next(decision.turn) % len(rotation)] if len(rotation) > 1 else rotation[0]
        return Selection._decided(self.pool, member, decision.epoch, decision.generation, now + decision.clock_offset)

    def success_is_news(self, selection: Selection, now: float) -> bool:
        """False when reporting this success would change nothing in Redis, as far as we know."""
        return self.quiet_decision(selection, now) is None

    def quiet_decision(self, selection: Selection, now: float) -> _Decision | None:
        """The decision under which a success of ``selection`` changes nothing, or None: report it.
        One read of the decision: another thread may drop it at any moment."""
        if selection.lease:
            return None
        decision = self._current(now)
        if decision is None or selection.epoch != decision.epoch or selection.member.id in decision.dirty:
            return None
        return decision

    def quiet_success(self, selection: Selection, now: float) -> dict[str, Any] | None:
        """The reply report_success would have given for a success that changes nothing, or None when
        it must be reported."""
        decision = self.quiet_decision(selection, now)
        if decision is None:
            return None
        return {"epoch": decision.epoch, "generation": decision.generation, "active": decision.active,
                "exhausted": False, "now": (now + decision.clock_offset) * 1000.0, "reset": False,
                "transitioned": False}
