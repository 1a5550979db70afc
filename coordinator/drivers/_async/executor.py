"""The loop that carries out a ``CallPlan``: store calls, attempts, sleeps and hook notices."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from coordinator.core.config import Member
from coordinator.core.types import Selection
from coordinator.drivers.base import raise_action, store_call
from coordinator.drivers.io_async import attempt, close_quietly, in_background, maybe_await
from coordinator.rules.hooks import CallTrace, Hook, dispatch
from coordinator.rules.plan import (
    NOTHING,
    Acquire,
    Attempt,
    CallPlan,
    Discard,
    Notify,
    Outcome,
    Raise,
    Return,
    Sleep,
)


async def run_plan(
    plan: CallPlan,
    pools: Mapping[str, Any],
    fn: Callable[[Member], Any],
    *,
    hooks: Sequence[Hook],
    sleep: Callable[[float], Any],
    first: tuple[Selection, Outcome] | None = None,
) -> Any:
    """Carries out ``plan``; ``pools`` maps pool names to the coordinator's pool objects. ``first``: the
    happy path's local selection and the outcome of its attempt (rules/happy.py), which the plan's
    first acquire and first attempt get instead of asking again."""
    trace = CallTrace(hooks, plan.pools, plan.clock)
    trace.start()
    error: BaseException | None = None
    try:
        action = plan.start()
        while True:
            if isinstance(action, Return):
                return action.value
            if isinstance(action, Raise):
                raise_action(action)
            if first is not None and isinstance(action, Acquire | Attempt):
                if isinstance(action, Acquire):
                    action = plan.send(Outcome(value=first[0]))
                    continue
                member = action.selection.member
                trace.attempt(action.selection.pool, member.id, member.model, action.attempt)
                outcome, first = first[1], None
                action = plan.send(outcome)
                continue
            store = store_call(pools, action)
            if store is not None:
                try:
                    outcome = Outcome(value=await store())
                except Exception as exc:
                    outcome = Outcome(error=exc)
            elif isinstance(action, Attempt):
                member = action.selection.member
                trace.attempt(action.selection.pool, member.id, member.model, action.attempt)
                try:
                    outcome = await attempt(fn, action.selection, plan.clock)
                except BaseException:
                    # Cancelled (or interrupted): a probe lease goes back now, not when its time runs out.
                    if action.selection.lease:
                        in_background(functools.partial(pools[action.selection.pool]._release, action.selection))
                    raise
            else:
                if isinstance(action, Sleep):
                    await maybe_await(sleep(action.seconds))
                elif isinstance(action, Notify):
                    dispatch(hooks, action.event)
                elif isinstance(action, Discard):
                    await close_quietly(action.value)
                outcome = NOTHING
            action = plan.send(outcome)
    except BaseException as exc:
        error = exc
        raise
    finally:
        plan.close()
        trace.end(error)
