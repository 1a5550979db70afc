"""``CallEvent``: the boundaries of a call, for the hooks that ask for them, on real Redis."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from helpers import fast_policy, members

import coordinator as co


class Recorder:
    call_events = True

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def __call__(self, event: Any) -> None:
        self.seen.append(event)


def phases(seen: list[Any]) -> list[str]:
    out = []
    for event in seen:
        if isinstance(event, co.CallEvent):
            out.append(event.phase if event.phase != "attempt" else f"attempt {event.member}")
        elif isinstance(event, co.AttemptEvent):
            out.append(f"{'ok' if event.ok else event.kind} {event.member}")
        else:
            out.append("transition " + ",".join(event.events))
    return out


def rate_limited(member: co.Member) -> Any:
    if member.id == "k0":
        return httpx.Response(429, headers={"retry-after": "30"}, request=httpx.Request("POST", "http://x"))
    return "served"


def coordinator(redis_url: str, **kwargs: Any) -> co.Coordinator:
    pool = co.PoolConfig(name="p", members=[co.Member(id="k0", model="gpt-a"), *members(2, "m")],
                         cooldown=fast_policy(rate_limited=30))
    return co.Coordinator(redis_url, [pool], prefix=f"t{uuid.uuid4().hex[:10]}", staleness=0, **kwargs)


def test_call_events_frame_the_attempts_in_order(redis_url: str) -> None:
    recorder, plain = Recorder(), []
    with coordinator(redis_url, hooks=[recorder, plain.append]) as coord:
        assert coord.call("p", rate_limited) == "served"
    assert phases(recorder.seen) == [
        "start", "attempt k0", "rate_limited k0", "transition failover", "attempt m0", "ok m0", "end",
    ]
    start, first, end = recorder.seen[0], recorder.seen[1], recorder.seen[-1]
    assert start.pools == ("p",)
    assert (first.pool, first.model, first.attempt, first.number) == ("p", "gpt-a", 1, 1)
    assert end.error is None and end.elapsed > 0
    # A hook that did not ask for call events sees exactly the two records it always saw.
    assert not any(isinstance(event, co.CallEvent) for event in plain)
    assert len(plain) == 3


def test_the_end_comes_once_even_when_the_call_raises(redis_url: str) -> None:
    recorder = Recorder()

    def broken(member: co.Member) -> Any:
        raise httpx.ConnectError("refused")

    def interrupted(member: co.Member) -> Any:
        raise KeyboardInterrupt

    with coordinator(redis_url, hooks=[recorder]) as coord:
        with pytest.raises(co.AllMembersFailedError):
            coord.call("p", broken, max_retries=0)
        with pytest.raises(KeyboardInterrupt):
            coord.call("p", interrupted)
    ends = [e for e in recorder.seen if isinstance(e, co.CallEvent) and e.phase == "end"]
    assert [e.error for e in ends] == ["AllMembersFailedError", "KeyboardInterrupt"]
    starts = [e for e in recorder.seen if isinstance(e, co.CallEvent) and e.phase == "start"]
    assert len(starts) == 2


def test_async_calls_report_the_same_boundaries(redis_url: str) -> None:
    recorder = Recorder()
    pool = co.PoolConfig(name="p", members=members(2), cooldown=fast_policy(rate_limited=30))

    async def main() -> None:
        async with co.AsyncCoordinator(redis_url, [pool], prefix=f"t{uuid.uuid4().hex[:10]}", staleness=0,
                                       hooks=[recorder]) as coord:
            async def fn(member: co.Member) -> Any:
                await asyncio.sleep(0)
                return rate_limited(member)

            assert await coord.call("p", fn) == "served"

    asyncio.run(main())
    assert phases(recorder.seen) == [
        "start", "attempt k0", "rate_limited k0", "transition failover", "attempt k1", "ok k1", "end",
    ]
