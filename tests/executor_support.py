"""Builders of the executor suites (tests/behaviour/test_executor*.py): the backend matrix with the
local-view cells, an injected clock, a fixed random source, a scripted ``fn`` and a ``call`` that
uses them."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import CELLS, VIEW_CELLS, Backend, make_backend

import coordinator as co


@pytest.fixture(params=CELLS + VIEW_CELLS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    """The matrix, plus cells where acquire decisions come from the local view, as in production."""
    yield from make_backend(request)


class FakeTime:
    """An injected clock and sleep: sleeping records the delay and moves the clock, nothing waits."""

    def __init__(self, on_sleep: Any = None) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep = on_sleep

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep is not None:
            self.on_sleep(seconds)


class FixedRandom:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


class Script:
    """``fn`` for ``coord.call``: per member id, a list of outcomes consumed in order (an exception to
    raise or a value to return); the last one repeats. Records the member of every call."""

    def __init__(self, plan: dict[str, list[Any]], default: Any = "ok") -> None:
        self.plan = {key: list(value) for key, value in plan.items()}
        self.default = default
        self.calls: list[str] = []

    def __call__(self, member: co.Member) -> Any:
        self.calls.append(member.id)
        outcomes = self.plan.get(member.id)
        outcome = (outcomes.pop(0) if len(outcomes) > 1 else outcomes[0]) if outcomes else self.default
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def frozen(snapshot: co.Snapshot) -> co.Snapshot:
    """A snapshot without its read time, to compare state before and after."""
    return dataclasses.replace(snapshot, now=0.0)


def call(coord: Any, pools: Any, fn: Any, fake: FakeTime | None = None, **kwargs: Any) -> Any:
    fake = fake or FakeTime()
    return coord.call(pools, fn, sleep=fake.sleep, clock=fake.clock, **kwargs)
