"""coordinator: fleet-wide failover for LLM credentials and models, with its state in Redis."""

from ._config import (
    Config,
    CooldownPolicy,
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
    ConfigError,
    CoordinatorError,
    CorruptStateError,
    PoolExhaustedError,
    StoreError,
    StoreUnavailableError,
    UnknownMemberError,
    UnknownPoolError,
)
from ._keys import KeySchema
from ._pool import AsyncPool, Pool
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
    "AsyncCoordinator",
    "AsyncPool",
    "Config",
    "ConfigError",
    "CooldownPolicy",
    "Coordinator",
    "CoordinatorError",
    "CorruptStateError",
    "FailoverEvent",
    "FailureKind",
    "FailureResult",
    "KeySchema",
    "Member",
    "MemberState",
    "ParkResult",
    "Pool",
    "PoolConfig",
    "PoolExhaustedError",
    "RedisConfig",
    "Result",
    "Selection",
    "Snapshot",
    "StoreError",
    "StoreUnavailableError",
    "Strategy",
    "SuccessResult",
    "UnknownMemberError",
    "UnknownPoolError",
    "load_config",
    "parse_duration",
]
