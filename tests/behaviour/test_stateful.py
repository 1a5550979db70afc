"""Stateful property test: the Lua state machine and a small pure-Python reference model, side by side.

The model is written from docs/design.md ("Cooldown length" to "When every member is unavailable"), not from
the Lua. Each step applies the same operation to
both, at the server time the script reports (``result.now``), and after every step the stored state
must agree field by field. Runs on real Redis and on memory://.
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

import coordinator as co

IDS = ["a", "b", "c", "d"]
POLICY = co.CooldownPolicy(
    rate_limited=0.02, quota_exhausted=0.04, auth=0.03, transient=0.01, min=0.005, max=0.08, transient_threshold=2
)


@dataclass
class MemberModel:
    cooling_until: int = 0
    failures: int = 0
    ejections: int = 0
    parked_until: float | None = None  # ms, math.inf for "until unparked"


@dataclass
class PoolModel:
    """Reference semantics of a sticky pool. Times are server milliseconds."""

    members: dict[str, MemberModel] = field(default_factory=lambda: {i: MemberModel() for i in IDS})
    active: str = IDS[0]
    exhausted: bool = False
    generation: int = 1  # the `created` event
    events: list[str] = field(default_factory=lambda: ["created"])
    #: Members this worker served on since its last failure report there (docs/design.md, "Failure
    #: counts"): its next failure report there restarts the count.
    served: set[str] = field(default_factory=set)

    def ready_at(self, member: str, now: int) -> float:
        m = self.members[member]
        t: float = m.cooling_until if m.cooling_until > now else 0
        if m.parked_until is not None and m.parked_until > now:
            t = max(t, m.parked_until)
        return t

    def available(self, member: str, now: int) -> bool:
        return self.ready_at(member, now) == 0

    def emit(self, kind: str) -> None:
        self.generation += 1
        self.events.append(kind)

    def successor(self, now: int) -> str | None:
        start = IDS.index(self.active)
        for k in range(1, len(IDS)):
            candidate = IDS[(start + k) % len(IDS)]
            if self.available(candidate, now):
                return candidate
        return None

    def exhaust(self) -> bool:
        if self.exhausted:
            return False
        self.exhausted = True
        self.emit("exhausted")
        return True

    def advance(self, kind: str, now: int, always: bool = False) -> bool:
        nxt = self.successor(now)
        if nxt is not None:
            self.active = nxt
            self.emit(kind)
            return True
        if always:
            self.emit(kind)
        return self.exhaust() or always

    def soonest(self, now: int) -> tuple[str, float]:
        best, best_t = IDS[0], math.inf
        for member in IDS:
            t = self.ready_at(member, now)
            if t < best_t:
                best, best_t = member, t
        return best, best_t

    def acquire(self, now: int) -> tuple[str | None, bool]:
        any_available = any(self.available(m, now) for m in IDS)
        if self.exhausted and any_available:
            self.exhausted = False
            if not self.available(self.active, now):
                self.active = self.successor(now)  # type: ignore[assignment]
            self.emit("recovered")
        if not any_available:
            self.exhaust()
            member, t = self.soonest(now)
            return (None, True) if t == math.inf else (member, True)
        if not self.available(self.active, now):
            self.advance("failover", now)
        return self.active, False

    def report_failure(self, member: str, token_gen: int, kind: str, hint_ms: int, now: int) -> bool:
        m = self.members[member]
        served = member in self.served
        self.served.discard(member)
        base = round(POLICY.base_for(kind) * 1000)
        lo, hi = round(POLICY.min * 1000), round(POLICY.max * 1000)

        def cooldown(ejections: int) -> int:
            d = hint_ms if hint_ms >= 0 else base * POLICY.multiplier**ejections
            return math.floor(min(max(d, lo), hi))

        if m.cooling_until > now:
            if hint_ms >= 0 and now + cooldown(0) > m.cooling_until + 1000:
                m.cooling_until = now + cooldown(0)
            return False
        if member == self.active and token_gen != self.generation:
            return False
        if served:  # the member served in between: this failure is the first of a new run
            m.failures = 0
        m.failures += 1
        threshold = POLICY.transient_threshold if kind == "transient" else 1
        if m.failures < threshold:
            return False
        m.cooling_until = now + cooldown(m.ejections)
        m.ejections += 1
        m.failures = 0
        if member == self.active:
            return self.advance("failover", now)
        return False

    def report_success(self, member: str) -> None:
        self.members[member].failures = 0
        self.members[member].ejections = 0
        self.served.add(member)

    def quiet_success(self, member: str) -> None:
        """A success the worker saw and did not report (a view's quiet success)."""
        self.served.add(member)

    def park(self, member: str, duration_ms: int | None, now: int) -> None:
        self.members[member].parked_until = math.inf if duration_ms is None else now + duration_ms
        if member == self.active:
            self.advance("parked", now, always=True)
        else:
            self.emit("parked")

    def unpark(self, member: str) -> None:
        if self.members[member].parked_until is not None:
            self.members[member].parked_until = None
            self.emit("unparked")

    def rotate(self, duration_ms: int, now: int) -> None:
        self.members[self.active].parked_until = now + duration_ms
        self.advance("rotated", now, always=True)


def ms(seconds: float | None) -> int:
    return 0 if seconds is None else round(seconds * 1000)


class PoolMachine(RuleBasedStateMachine):
    url: str = ""

    selections = Bundle("selections")

    @initialize(target=selections)
    def start(self) -> co.Selection:
        cfg = co.PoolConfig(name="sm", members=[co.Member(id=i) for i in IDS], cooldown=POLICY)
        self.prefix = f"sm{uuid.uuid4().hex[:8]}"
        # No view: every success is reported, as the model says; quiet_success is the view's kind.
        self.coord = co.Coordinator(self.url, [cfg], prefix=self.prefix, staleness=0)
        self.pool = self.coord.pool("sm")
        self.model = PoolModel()
        sel = self.pool.acquire()
        assert sel.member.id == "a" and sel.generation == 1
        return sel

    def teardown(self) -> None:
        if hasattr(self, "coord"):
            self.coord.client.delete(*co.KeySchema(self.prefix).pool_keys("sm"))
            self.coord.close()

    @rule(target=selections)
    def acquire(self) -> co.Selection | None:
        try:
            sel = self.pool.acquire()
        except co.PoolExhaustedError:
            # Only members parked until unparked remain: the outcome does not depend on time.
            expected, _ = self.model.acquire(ms(self.pool.snapshot().now))
            assert expected is None
            return None
        expected, degraded = self.model.acquire(ms(sel.now))
        assert (sel.member.id, sel.degraded) == (expected, degraded)
        return sel

    @rule(
        sel=selections,
        kind=st.sampled_from(["rate_limited", "quota_exhausted", "auth", "transient"]),
        hint=st.one_of(st.none(), st.floats(min_value=0.0, max_value=0.1)),
    )
    def report_failure(self, sel: co.Selection | None, kind: str, hint: float | None) -> None:
        if sel is None:
            return
        result = self.pool.report_failure(sel, kind, retry_after=hint)
        hint_ms = -1 if hint is None else ms(hint)
        expected = self.model.report_failure(sel.member.id, sel.generation, kind, hint_ms, ms(result.now))
        assert result.transitioned == expected

    @rule(sel=selections)
    def report_success(self, sel: co.Selection | None) -> None:
        if sel is None:
            return
        self.pool.report_success(sel)
        self.model.report_success(sel.member.id)

    @rule(sel=selections)
    def quiet_success(self, sel: co.Selection | None) -> None:
        if sel is None:
            return
        # Without a view (staleness 0) every success would be reported: this is the success a worker
        # with a view keeps to itself, noted for its next failure report.
        self.pool.quiet_success(sel)
        self.model.quiet_success(sel.member.id)

    @rule(member=st.sampled_from(IDS), seconds=st.sampled_from([None, 0.03, 0.1]))
    def park(self, member: str, seconds: float | None) -> None:
        result = self.pool.park(member, seconds=seconds, reason="test")
        self.model.park(member, None if seconds is None else ms(seconds), ms(result.now))

    @rule(member=st.sampled_from(IDS))
    def unpark(self, member: str) -> None:
        self.pool.unpark(member)
        self.model.unpark(member)

    @rule(seconds=st.sampled_from([0.02, 0.06]))
    def rotate(self, seconds: float) -> None:
        result = self.pool.rotate(reason="test", seconds=seconds)
        self.model.rotate(ms(seconds), ms(result.now))

    @rule(wait_ms=st.integers(min_value=0, max_value=60))
    def let_time_pass(self, wait_ms: int) -> None:
        # Cooldowns are server time: this lets some of them lapse, nothing waits for a result.
        time.sleep(wait_ms / 1000)

    @invariant()
    def stored_state_matches_model(self) -> None:
        if not hasattr(self, "pool"):
            return
        raw = self.coord.client.hgetall(co.KeySchema(self.prefix).pool("sm"))
        assert raw["active"] == self.model.active
        assert int(raw["generation"]) == self.model.generation
        assert (raw.get("exhausted") == "1") == self.model.exhausted
        for member, m in self.model.members.items():
            assert int(raw.get(f"{member}:cooling_until", 0)) == m.cooling_until, member
            assert int(raw.get(f"{member}:failures", 0)) == m.failures, member
            assert (f"{member}:failed_at" in raw) == (m.failures > 0), member
            assert int(raw.get(f"{member}:ejections", 0)) == m.ejections, member
            parked = raw.get(f"{member}:parked_until")
            expected = None if m.parked_until is None else ("forever" if m.parked_until == math.inf else str(
                int(m.parked_until)))
            assert parked == expected, member
        assert [e.type for e in self.pool.events(limit=1000)] == self.model.events[-1000:]


@pytest.mark.parametrize("kind", ["redis", "memory"])
def test_lua_state_machine_matches_reference_model(kind, redis_url):
    machine = type(f"PoolMachine_{kind}", (PoolMachine,), {"url": redis_url if kind == "redis" else "memory://sm"})
    run_state_machine_as_test(
        machine,
        settings=settings(
            max_examples=40, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
        ),
    )
