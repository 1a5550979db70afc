"""What a redis-py exception means for a call (docs/design.md, "When Redis is away").

Three answers: Redis cannot serve the call now, for a reason that is not the caller's (``trouble``
says which; the call is served from the local stand-in like in an outage); one of our script's error
replies (our own exception); or something else (re-raised unchanged). Among the troubles, some are
deterministic misconfiguration (credentials, TLS, a missing grant): they do not pass by themselves,
so they are logged at ERROR and reported by ``check()``, and a coordinator refuses to start on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NoReturn

import redis
from redis.exceptions import (
    AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    TryAgainError,
)

from coordinator.core.errors import CorruptStateError, StoreMisconfiguredError, StoreUnavailableError
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


@dataclass(frozen=True)
class Trouble:
    """Why Redis cannot serve a call now: one phrase for logs and operators."""

    what: str
    #: Credentials, TLS or a grant: it will not pass by itself, an operator must act.
    misconfigured: bool = False


#: Error-reply prefixes (Redis' own codes, and the scripts' COORD_NOPERM) that are not the caller's fault.
_REPLY_CODES: tuple[tuple[str, Trouble], ...] = (
    ("OOM", Trouble("Redis is out of memory (maxmemory reached) and refuses writes")),
    ("READONLY", Trouble("Redis is a read-only replica")),
    ("LOADING", Trouble("Redis is loading its dataset")),
    ("BUSY", Trouble("Redis is busy running a script")),
    ("MASTERDOWN", Trouble("the replica's link to its master is down")),
    ("CLUSTERDOWN", Trouble("the Redis Cluster is down")),
    ("TRYAGAIN", Trouble("the Redis Cluster is resharding")),
    ("MISCONF", Trouble("Redis refuses writes: it cannot persist its data (MISCONF)")),
    ("NOAUTH", Trouble("Redis requires a password the URL does not give", misconfigured=True)),
    ("WRONGPASS", Trouble("Redis refused the credentials", misconfigured=True)),
    ("NOPERM", Trouble("the Redis user lacks a permission", misconfigured=True)),
    ("COORD_NOPERM", Trouble("the Redis user lacks a permission", misconfigured=True)),
)
_BY_CODE = dict(_REPLY_CODES)
_CLASSES: tuple[tuple[type[Exception], str], ...] = (
    (OutOfMemoryError, "OOM"), (ReadOnlyError, "READONLY"), (BusyLoadingError, "LOADING"),
    (MasterDownError, "MASTERDOWN"), (TryAgainError, "TRYAGAIN"), (ClusterDownError, "CLUSTERDOWN"),
)
_TLS_WORDS = ("ssl", "certificate", "tls")


def short_error(exc: BaseException, limit: int = 200) -> str:
    """One readable log line: Sentinel errors embed the repr of a whole client."""
    text = str(exc).split(" : <", 1)[0].split(" script: ", 1)[0]
    return f"{type(exc).__name__}: {text[:limit]}"


def trouble(exc: BaseException) -> Trouble | None:
    """Why ``exc`` means Redis cannot serve now, or None when it does not (the call itself is wrong)."""
    text = str(exc)
    if isinstance(exc, AuthenticationError | AuthenticationWrongNumberOfArgsError | AuthorizationError):
        if "HELLO must be called" in text or "Authentication required" in text:
            return Trouble("Redis requires a password the URL does not give", misconfigured=True)
        return Trouble("Redis refused the credentials (wrong password, unknown or disabled user)",
                       misconfigured=True)
    if isinstance(exc, NoPermissionError):
        return Trouble(f"the Redis user lacks a permission: {short_error(exc)}", misconfigured=True)
    # redis-py strips the code from the replies it has a class for: match those by class.
    for kind, code in _CLASSES:
        if isinstance(exc, kind):
            return _BY_CODE[code]
    if isinstance(exc, redis.ResponseError):
        # Script errors carry the code of the command that failed inside the script.
        head = text.lstrip("-")
        for code, found in _REPLY_CODES:
            if head.startswith(code + " ") or head == code:
                if found.misconfigured:
                    detail = head.partition(" ")[2].split(" script: ")[0]
                    return Trouble(f"{found.what}: {detail}", misconfigured=True)
                return found
        return None
    if isinstance(exc, redis.TimeoutError):
        return Trouble("Redis did not answer in time")
    if isinstance(exc, redis.ConnectionError | OSError) and any(w in text.lower() for w in _TLS_WORDS):
        return Trouble(f"the TLS handshake failed: {short_error(exc)}", misconfigured=True)
    if isinstance(exc, UNAVAILABLE):
        return Trouble("Redis is unreachable")
    return None


def corruption(codec: PoolCodec, exc: BaseException) -> str | None:
    """What is corrupt in ``codec``'s pool when ``exc`` says so (a script's ``COORD_CORRUPT``, a configured
    member missing from the stored list, a stream of another type, a foreign stream entry), else None."""
    if isinstance(exc, CorruptStateError):
        text = str(exc)
        if "corrupt state: " in text:
            return text.partition("corrupt state: ")[2].partition("; ")[0]
        return text.partition(": ")[2] if " holds an entry " in text else None
    if not isinstance(exc, redis.ResponseError) or trouble(exc) is not None:
        return None
    mapped = codec.translate_error(str(exc))
    return corruption(codec, mapped) if isinstance(mapped, CorruptStateError) else None


def reraise(codec: PoolCodec, exc: Exception, script: str | None = None) -> NoReturn:
    """Our own error for a script's error reply, or for a Redis that cannot serve; others unchanged,
    except that a Lua error in ``script`` names the file and line of ``lua/`` it came from."""
    found = trouble(exc)
    if found is not None and found.misconfigured:
        raise StoreMisconfiguredError(f"pool {codec.name!r}: {found.what}") from exc
    if isinstance(exc, redis.ResponseError) and found is None:
        mapped = codec.translate_error(str(exc))
        if mapped is not None:
            raise mapped from None
        if script is not None:
            located = name_lines(script, str(exc))
            if located != str(exc):
                raise type(exc)(located) from exc
    if found is not None:
        raise StoreUnavailableError(f"pool {codec.name!r}: {found.what}: {short_error(exc)}") from exc
    raise exc
