"""coordinator: fleet-wide failover for LLM credentials and models, with its state in Redis."""

from ._backoff import RandomSource
from ._classify import Classifier, Failure, classify
from ._config import (
    Config,
    CooldownPolicy,
    ExhaustedPolicy,
    FailureKind,
    Member,
    PoolConfig,
    RedisConfig,
    Strategy,
    load_config,
    parse_duration,
)
from ._coordinator import AsyncCoordinator, Coordinator
from ._errors import (
    AllMembersFailedError,
    Cause,
    ConfigError,
    CoordinatorError,
    CorruptStateError,
    PoolExhaustedError,
    StoreError,
    StoreUnavailableError,
    UnknownMemberError,
    UnknownPoolError,
)
from ._hints import preemptive_cooldown, rate_limit_hint
from ._hooks import AttemptEvent, CallEvent, Hook, HookEvent, LoggingHook, TransitionEvent
from ._keys import KeySchema
from ._pool import AsyncPool, Pool
from ._transport import POOLS_HEADER, FailoverTransport
from ._types import (
    FailoverEvent,
    FailureResult,
    MemberState,
    ParkResult,
    Result,
    Selection,
    Snapshot,
    SuccessResult,
)

__all__ = [
    "AllMembersFailedError",
    "AsyncCoordinator",
    "AsyncPool",
    "AttemptEvent",
    "CallEvent",
    "Cause",
    "Classifier",
    "Config",
    "ConfigError",
    "CooldownPolicy",
    "Coordinator",
    "CoordinatorError",
    "CorruptStateError",
    "ExhaustedPolicy",
    "FailoverEvent",
    "FailoverTransport",
    "Failure",
    "FailureKind",
    "FailureResult",
    "Hook",
    "HookEvent",
    "KeySchema",
    "LoggingHook",
    "Member",
    "MemberState",
    "POOLS_HEADER",
    "ParkResult",
    "Pool",
    "PoolConfig",
    "PoolExhaustedError",
    "RandomSource",
    "RedisConfig",
    "Result",
    "Selection",
    "Snapshot",
    "StoreError",
    "StoreUnavailableError",
    "Strategy",
    "SuccessResult",
    "TransitionEvent",
    "UnknownMemberError",
    "UnknownPoolError",
    "classify",
    "load_config",
    "parse_duration",
    "preemptive_cooldown",
    "rate_limit_hint",
]
