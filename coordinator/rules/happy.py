"""The happy path of ``coord.call`` (docs/design.md, "The local view"): what may skip the call plan.

Most calls are one attempt on the member the local view names, and a success that changes nothing in
Redis. The drivers run such a call without building a ``CallPlan``: one local acquire, the attempt,
one local success. Anything else (no local decision, hooks to notify, an attempt that failed, a
success Redis must hear about, a spent rate-limit window) hands the attempt already made to the
generic plan, which carries on from there exactly as if it had made it itself. Sans-IO.
"""

from __future__ import annotations

from collections.abc import Sequence

from coordinator.rules.classify import is_response
from coordinator.rules.hints import preemptive_cooldown
from coordinator.rules.plan import Outcome
from coordinator.rules.plan import _headers_of as headers_of  # one definition of "the headers"


def first_pool(pools: str | Sequence[str]) -> str | None:
    """The pool a call tries first, or None when the arguments are for the plan to judge (an empty or
    repeating chain: its error comes from the plan, before any attempt)."""
    if isinstance(pools, str):
        return pools
    if isinstance(pools, list | tuple) and len(pools) == 1:  # the common chain of one (the transport's)
        name: object = pools[0]
        return name if isinstance(name, str) else None
    names: list[str] = list(pools)
    if not names or len(set(names)) != len(names) or not all(isinstance(n, str) for n in names):
        return None
    return names[0]


def plain_success(out: Outcome) -> bool:
    """An attempt that served and asks for nothing more: no error, no error response, and no
    rate-limit header saying the member's window is spent (which the plan turns into a cooldown)."""
    if out.error is not None:
        return False
    value = out.value
    if value is None:
        return True
    if is_response(value):  # is_error_response and headers_of in one look
        if value.status_code >= 400:
            return False
        headers = value.headers
    else:
        headers = headers_of(value)
    return preemptive_cooldown(headers) is None
