"""What a redis-py exception means for a call: Redis unavailable now, one of our script's error replies,
or something else (re-raised unchanged)."""

from __future__ import annotations

from typing import NoReturn

import redis
from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)

from coordinator.core.errors import StoreUnavailableError
from coordinator.store.codec import PoolCodec
from coordinator.store.scripts import name_lines

#: Errors that mean "Redis cannot take this call now" rather than "the call is wrong".
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    ReadOnlyError,  # a replica that has not been promoted yet, after a failover
    ClusterDownError,
    TryAgainError,
    MasterDownError,
    RedisClusterException,
    OSError,
)


def short_error(exc: BaseException) -> str:
    """One readable log line: Sentinel errors embed the repr of a whole client."""
    text = str(exc).split(" : <", 1)[0]
    return f"{type(exc).__name__}: {text[:200]}"


def reraise(codec: PoolCodec, exc: Exception, script: str | None = None) -> NoReturn:
    """Our own error for a script's error reply, or for an unreachable Redis; others unchanged, except
    that a Lua error in ``script`` names the file and line of ``lua/`` it came from."""
    if isinstance(exc, redis.ResponseError):
        mapped = codec.translate_error(str(exc))
        if mapped is not None:
            raise mapped from None
        if script is not None:
            located = name_lines(script, str(exc))
            if located != str(exc):
                raise type(exc)(located) from exc
    if isinstance(exc, UNAVAILABLE):
        raise StoreUnavailableError(f"pool {codec.name!r}: Redis unavailable: {exc}") from exc
    raise exc
