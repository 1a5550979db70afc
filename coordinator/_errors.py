"""The exception tree of coordinator. Every error the library raises on purpose is one of these::

    CoordinatorError
    ├── ConfigError              bad config file or value (also a ValueError)
    ├── UnknownPoolError         no pool of that name is configured (also a KeyError)
    ├── UnknownMemberError       no member of that id in the pool (also a KeyError)
    ├── StoreError               the shared state could not be used
    │   ├── StoreUnavailableError    Redis could not be reached in time
    │   └── CorruptStateError        a pool's keys hold something the scripts cannot trust
    └── PoolExhaustedError       no member of a pool can serve; carries ``retry_at``

Config objects built in Python raise pydantic's ``ValidationError`` as usual.
"""

from __future__ import annotations


class CoordinatorError(Exception):
    """Root of every error coordinator raises on purpose."""


class ConfigError(CoordinatorError, ValueError):
    """A config file or value is invalid; the message names the field."""


class UnknownPoolError(CoordinatorError, KeyError):
    """The named pool is not configured."""

    def __init__(self, pool: str, known: list[str] | None = None) -> None:
        self.pool = pool
        hint = f" (configured: {', '.join(known)})" if known else ""
        super().__init__(f"unknown pool {pool!r}{hint}")

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownMemberError(CoordinatorError, KeyError):
    """The pool has no member with that id."""

    def __init__(self, pool: str, member: str) -> None:
        self.pool = pool
        self.member = member
        super().__init__(f"pool {pool!r} has no member {member!r}")

    def __str__(self) -> str:
        return str(self.args[0])


class StoreError(CoordinatorError):
    """The shared state in Redis could not be used."""


class StoreUnavailableError(StoreError):
    """Redis could not be reached, or did not answer in time."""


class CorruptStateError(StoreError):
    """A pool's Redis keys hold data the scripts refuse to trust. Nothing was written."""


class PoolExhaustedError(CoordinatorError):
    """No member of the pool can serve now. ``retry_at`` is the soonest recovery (unix seconds),
    or None when every member is parked until an operator unparks it."""

    def __init__(self, pool: str, retry_at: float | None, message: str | None = None) -> None:
        self.pool = pool
        self.retry_at = retry_at
        super().__init__(message or f"pool {pool!r} has no member that can serve")
